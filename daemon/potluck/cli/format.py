"""Tables for people: what `status`, `peers`, `log`, `update inspect` and `update list` print
without --json (the control API's replies, as dicts)."""

from __future__ import annotations

import time
from typing import Any


def _round_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """Where the last attempt merged (and the run's policy), and why the last round or attempt failed."""
    rows = []
    agg = s.get("aggregation") or {}
    if agg.get("pacing") == "ready":
        waiting = f"; waiting for {agg['waiting_for']} declared update(s)" if agg.get("waiting_for") else ""
        closed = f"; the last round closed: {agg['close_reason']}" if agg.get("close_reason") else ""
        rows.append(("pacing", f"ready{waiting}{closed}"))
    if agg.get("placement"):
        rows.append(("placement", f"{agg['placement']} (policy {agg.get('placement_policy') or 'auto'})"))
    if agg.get("last_phases"):
        phases = ", ".join(f"{k} {v:.2f}s" for k, v in agg["last_phases"].items())
        rows.append(("last attempt", phases))
    if agg.get("damped"):  # the strategy's own factors: why those updates counted less
        factors = ", ".join(f"{u[:12]} x{f:.3f}" for u, f in sorted(agg["damped"].items()))
        rows.append(("damped", f"{len(agg['damped'])} update(s) by {agg.get('strategy')}: {factors}"))
    for reason, n in sorted((agg.get("probe_counts") or {}).items()):  # the probe rule's drops, by reason
        from potluck.rounds.merging import PROBE_REASONS  # only here: numpy and the strategies

        why = PROBE_REASONS.get(reason, reason)
        rows.append(("probe", f"excluded {n} update(s) since start ({reason}): {why}"))
    if agg.get("probe_excluded"):
        last = ", ".join(f"{u[:12]} ({r})" for u, r in sorted(agg["probe_excluded"].items()))
        rows.append(("probe", f"the last merge excluded {last}"))
    if s.get("round_error"):
        rows.append(("round error", s["round_error"]))
    for i, c in enumerate(agg.get("convicted") or ()):  # reducers this node holds proven liars, and why
        rows.append(
            (
                "convicted" if i == 0 else "",
                f"{c['node_id'][:16]} in round {c['round']}: {c.get('why') or 'a wrong merge'}",
            )
        )
    sync = s.get("sync") or {}
    if sync.get("version"):  # a download under way; its target grows as holders name tensor sizes
        target = _bytes(sync["target_bytes"]) if sync["target_bytes"] else "?"
        rows.append(("syncing", f"{sync['version'][:12]}: {_bytes(sync['bytes'])} of {target}"))
    return rows


def format_status(s: dict[str, Any], metric: tuple[str, bool] = ("accuracy", True)) -> str:
    """``metric``: the name of the run's held-out score and whether higher is better (the reply keeps
    it as ``accuracy`` whatever the task's metric; the lm task's is bits per byte, lower is better)."""
    boot = s["bootstrap"]
    boot_text = boot["state"]
    if boot["state"] != "none":
        boot_text += f" ({boot['attempts']} attempt{'s' if boot['attempts'] != 1 else ''})"
    if boot["state"] == "retrying":
        boot_text += f", next in {boot['next_retry_in_s']:.0f}s: {boot['last_error']}"
    rejected = " ".join(f"{k}={v}" for k, v in sorted(s["rejected_records"].items()) if v) or "none"
    rows = [
        ("node id", s["node_id"]),
        ("peer id", s["peer_id"]),
        ("run", s["run"]),
        ("role", s["role"]),
        ("agent", s["agent_version"]),
        ("uptime", _duration(s["uptime_s"])),
        ("peers", str(s["peers"])),
        ("bootstrap", boot_text),
        ("run id", s["run_id"] or "-"),
        (
            "round",
            f"{s['round']} ({s['phase']})"
            # collecting closes a quarter round before the end: publish before then (rounds.schedule)
            + (
                f", takes updates for {s['collecting_deadline'] - time.time():.0f}s more"
                + (" at most" if (s.get("aggregation") or {}).get("pacing") == "ready" else "")
                if s.get("collecting_deadline", 0) > time.time() and s["phase"] == "collecting"
                else ""
            )
            + (f", ends in {max(0.0, s['deadline'] - time.time()):.0f}s" if s["deadline"] else ""),
        ),
        (
            "version",
            (s["version"] or s["model_version"] or "-")
            + (f" (round {s['committed_round']})" if s["committed_round"] >= 0 else ""),
        ),
        *_score_rows(s, metric),
        # who merged the last commit (its participant list); how many signed it is `potluck log`'s SIGNATURES
        ("merged by", f"{len(s['participants'])} participants" if s["participants"] else "-"),
        *_round_rows(s),
        (
            "updates",
            f"{s['held_updates']} held, {s['accepted_updates']} accepted, {s['fetched_updates']} fetched",
        ),
        (
            "rejected upd",
            " ".join(f"{k}={v}" for k, v in sorted(s["rejected_updates"].items()) if v) or "none",
        ),
        *_module_rows(s.get("modules")),
        ("rejected rec", rejected),
        *_defence_rows(s.get("defence")),
        ("dht restarts", str(s["dht_restarts"])),
        ("traffic", _traffic(s.get("traffic"))),
        ("control api", s["rpc_address"]),
    ]
    rows += [("address" if i == 0 else "", a) for i, a in enumerate(s["addrs"] or ["-"])]
    return "\n".join(f"{k:<13} {v}" for k, v in rows)


def _module_rows(m: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The module library's traffic (a run whose task takes modules)."""
    if not m or not (m["kept"] or m["fetched"] or any(m["refused"].values())):
        return []
    refused = " ".join(f"{k}={v}" for k, v in sorted(m["refused"].items()) if v) or "none"
    return [("modules", f"{m['kept']} kept, {m['fetched']} fetched; refused: {refused}")]


def _score_rows(s: dict[str, Any], metric: tuple[str, bool]) -> list[tuple[str, str]]:
    """The current version's held-out score, once the node evaluated it (-1: not evaluated)."""
    score = s.get("accuracy", -1.0)
    if score is None or score < 0:
        return []
    better = "higher" if metric[1] else "lower"
    return [(metric[0], f"{score:.4f} on the held-out split ({better} is better)")]


def _defence_rows(d: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not d:
        return []
    rows = [
        (
            "banned" if i == 0 else "",
            f"{b['node_id'][:16]} {b['reason']} in round {b['round']} (evidence {b['evidence_id'][:12]})",
        )
        for i, b in enumerate(d["bans"])
    ] or [("banned", "none")]
    if d["probation_rounds"]:
        on = " ".join(f"{p['node_id'][:16]}({p['rounds_left']} left)" for p in d["probation"]) or "nobody"
        rows.append(("probation", f"{d['probation_rounds']} rounds; {on}"))
    rejected = " ".join(f"{k}={v}" for k, v in sorted(d["evidence_rejected"].items()) if v)
    rows.append((
        "evidence",
        f"{d['evidence_verified']} verified ({d['equivocations_found']} found here), "
        f"{d['evidence_published']} published, {d['evidence_pending']} pending"
        + (f", rejected {rejected}" if rejected else ""),
    ))  # fmt: skip
    return rows


def _traffic(t: dict[str, Any] | None) -> str:
    """One line: bytes since start, the recent rate, its largest kinds; why kernel counts are missing."""
    if not t:
        return "-"
    kinds = t["kinds"]
    total = t["total"] if t["kernel"] == "ok" and t["total"] else None
    if total is None:  # no kernel counters: what potluck counted itself
        total = {
            key: sum(k[key] for k in kinds.values()) for key in ("sent", "recv", "sent_rate", "recv_rate")
        }
    rate = total["sent_rate"] + total["recv_rate"]
    top = sorted(((k["sent_rate"] + k["recv_rate"], name) for name, k in kinds.items()), reverse=True)[:3]
    line = f"{_bytes(total['sent'])} sent, {_bytes(total['recv'])} recv; {_bytes(rate)}/s now"
    if t["window_s"] and rate > 0:
        line += " (" + ", ".join(f"{name} {_bytes(r)}/s" for r, name in top if r > 0) + ")"
    return line + ("" if t["kernel"] == "ok" else f"; kernel counters {t['kernel']}")


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _peer_defence(p: dict[str, Any]) -> str:
    if p.get("banned"):
        return f"banned ({p['ban_reason']})"
    if p.get("probation_rounds_left"):
        return f"probation ({p['probation_rounds_left']} left)"
    return "-"


def format_peers(peers: list[dict[str, Any]]) -> str:
    if not peers:
        return "no peers"
    now = time.time()
    header = ("NODE ID", "PEER ID", "ROLE", "SEEN", "MODEL", "DEFENCE", "ADDRESS")
    rows = [
        (
            p["node_id"][:16],
            p["peer_id"],
            p["role"],
            f"{max(0.0, now - p['last_seen']):.0f}s ago",
            p["model_version"][:12] or "-",
            _peer_defence(p),
            p["addrs"][0] if p["addrs"] else "-",
        )
        for p in peers
    ]
    return _table(header, rows)


def format_update(info: dict[str, Any]) -> str:
    if "id" not in info:
        return f"not an update ({info['bytes']} bytes): {info['reason']}: {info.get('detail', '')}"
    rows = [
        ("id", info["id"]),
        ("valid", "yes" if info["valid"] else f"no: {info['reason']}"),
        ("signature", "ok" if info["signature_ok"] else "BAD"),
        ("author", info["author"]),
        ("run", info["run"]),
        ("round", str(info["round"])),
        ("base", info["base"]),
        ("seq", str(info["seq"])),
        ("samples", str(info["sample_count"])),
        ("nonzeros", f"{info['nonzeros']} in {len(info['tensors'])} tensors"),
        ("bytes", f"{info['bytes']} ({info['compression_ratio']:.0f}x smaller than dense fp32)"),
    ]
    lines = [f"{k:<10} {v}" for k, v in rows]
    lines += [
        f"  {t['name']}: {t['nonzeros']} of {t['shape']}, {t['indices']} + {t['values']}"
        for t in info["tensors"]
    ]
    return "\n".join(lines)


def format_log(entries: list[dict[str, Any]], metric: str = "ACCURACY") -> str:
    """``metric``: the header of the held-out score (the history keeps it as ``accuracy`` whatever
    the task's metric; the lm task's is BPB)."""
    if not entries:
        return "no committed versions yet"
    header = ("ROUND", "VERSION", "PARENT", "UPDATES", "CONTRIBUTORS", "SIGNATURES", metric, "TIME")
    rows = [
        (
            str(e["round"]),
            e["version"][:16],
            e["parent"][:16],
            str(e["updates"]),
            str(len(e["contributors"])),
            str(e["signatures"]),  # the commit signatures this node holds
            "-" if e.get("accuracy") is None else f"{e['accuracy']:.3f}",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"])),
        )
        for e in entries
    ]
    undone = [f"round {e['round']} reverts {', '.join(u[:16] for u in e['reverts'])}" for e in entries
              if e.get("reverts")]  # fmt: skip
    return _table(header, rows) + "".join(f"\n{line}" for line in undone)


def format_updates(updates: list[dict[str, Any]]) -> str:
    if not updates:
        return "no updates held"
    header = ("UPDATE ID", "AUTHOR", "ROUND", "SEQ", "BYTES", "SOURCE")
    rows = [
        (u["update_id"][:16], u["author"][:16], str(u["round"]), str(u["seq"]), str(u["size"]), u["source"])
        for u in updates
    ]
    return _table(header, rows)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h{minutes:02d}m{secs:02d}s"
        if hours
        else f"{minutes}m{secs:02d}s"
        if minutes
        else f"{seconds:.1f}s"
    )
