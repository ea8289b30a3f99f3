#!/usr/bin/env bash
# Wrapper around `potluck` for docker/compose.yaml: how joiners learn the bootstrap node's address.
#
# Bootstrap side: with POTLUCK_PUBLISH_FILE and POTLUCK_PUBLISH_ADDR set, create/load the node key
# (`potluck id`) and write "$POTLUCK_PUBLISH_ADDR/p2p/<peer id>" to that file (on a shared volume)
# before starting. The key lives in the node's own volume, so the peer id is stable across restarts.
#
# Joiner side: an argument "@FILE" is replaced by the address in FILE, waiting up to
# POTLUCK_WAIT_S seconds (default 120) for it to appear. A /dns4/NAME/ part is resolved here to
# /ip4/ADDR/, so bootstrapping does not depend on p2pd resolving DNS names.
#
# Then `exec potluck ARGS...`: potluck replaces this shell and gets the container's signals.
set -euo pipefail

wait_s="${POTLUCK_WAIT_S:-120}"

log() { echo "potluck-entrypoint: $*" >&2; }

publish() {
    local file="$1" prefix="$2" peer_id
    peer_id="$(potluck id --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["peer_id"])')"
    # write then rename: a joiner never reads a half-written address
    printf '%s/p2p/%s\n' "$prefix" "$peer_id" >"$file.tmp.$$"
    mv -f "$file.tmp.$$" "$file"
    log "published $prefix/p2p/$peer_id to $file"
}

resolve_dns4() {
    local addr="$1" rest host ip
    if [[ "$addr" =~ ^/dns4/([^/]+)(/.*)$ ]]; then
        host="${BASH_REMATCH[1]}" rest="${BASH_REMATCH[2]}"
        ip="$(getent ahostsv4 "$host" | awk 'NR == 1 { print $1 }')" || true
        [[ -n "$ip" ]] || return 1
        addr="/ip4/$ip$rest"
    fi
    printf '%s\n' "$addr"
}

read_address() {
    local file="$1" deadline=$((SECONDS + wait_s)) addr="" resolved
    while true; do
        [[ -s "$file" ]] && addr="$(head -n 1 "$file")"
        if [[ -n "$addr" ]] && resolved="$(resolve_dns4 "$addr")"; then
            printf '%s\n' "$resolved"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            log "no usable address in $file after ${wait_s}s (got: '${addr}')"
            return 1
        fi
        sleep 1
    done
}

if [[ -n "${POTLUCK_PUBLISH_FILE:-}" ]]; then
    publish "$POTLUCK_PUBLISH_FILE" "${POTLUCK_PUBLISH_ADDR:?POTLUCK_PUBLISH_ADDR is required with POTLUCK_PUBLISH_FILE}"
fi

args=()
for arg in "$@"; do
    if [[ "$arg" == @* ]]; then
        arg="$(read_address "${arg#@}")"
        log "bootstrap peer $arg"
    fi
    args+=("$arg")
done

exec potluck "${args[@]}"
