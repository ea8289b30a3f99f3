"""`potluck log` and `export`: the committed versions a node keeps in its data dir (no node needed)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from potluck.cli.common import Commands, data_dir_arg, non_negative_int, output_file
from potluck.cli.format import format_log
from potluck.errors import ConfigError


def add_parsers(commands: Commands) -> None:
    log = commands.add_parser(
        "log",
        help="the committed versions of this node's run (reads <data-dir>)",
        description="List the versions this node committed, oldest first (no running node needed).",
    )
    log.set_defaults(handler=cmd_log)
    data_dir_arg(log)
    log.add_argument("--json", action="store_true", help="print JSON")

    export = commands.add_parser(
        "export",
        help="write a committed version to a safetensors file",
        description="Write a version this node committed (default: the latest) to a safetensors file.",
    )
    export.set_defaults(handler=cmd_export)
    data_dir_arg(export)
    which = export.add_mutually_exclusive_group()
    which.add_argument(
        "--version",
        metavar="HASH",
        type=_version_prefix,
        help=f"version hash, or an unambiguous prefix of at least {MIN_PREFIX} hex digits",
    )
    which.add_argument("--round", type=non_negative_int, help="the version committed in this round")
    export.add_argument(
        "-o",
        "--output",
        type=output_file,
        required=True,
        metavar="MODEL.safetensors",
        help="the file to write",
    )


MIN_PREFIX = 6  # hex digits: shorter, `--version 0` would silently pick whichever hash starts with 0


def _version_prefix(text: str) -> str:
    if len(text) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in text):
        raise argparse.ArgumentTypeError(
            f"expected at least {MIN_PREFIX} lowercase hex digits of a version hash, got {text!r}"
            " (a round number: --round N)"
        )
    return text


def _open_history(data_dir: Path):
    from potluck.node import HISTORY_FILE
    from potluck.store.history import History

    path = data_dir.expanduser() / HISTORY_FILE
    if not path.exists():
        raise ConfigError(f"no history in {data_dir}: this node has not taken part in a run")
    return History(path, readonly=True)


def cmd_log(args: argparse.Namespace) -> int:
    with _open_history(args.data_dir) as history:
        entries = history.log()
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        print(format_log(entries))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from potluck.store.versions import CorruptVersion, VersionNotFound, VersionStore, atomic_save

    with _open_history(args.data_dir) as history:
        entries = history.log()
    if not entries:
        raise ConfigError("no committed version yet")
    if args.round is not None:
        matches = [e["version"] for e in entries if e["round"] == args.round]
        if not matches:
            raise ConfigError(f"--round {args.round}: no version committed in that round (see potluck log)")
    else:
        wanted = args.version or entries[-1]["version"]
        matches = sorted({e["version"] for e in entries if e["version"].startswith(wanted)})
        if len(matches) != 1:
            raise ConfigError(f"--version {wanted!r} matches {len(matches)} committed versions")
    try:
        state = VersionStore(args.data_dir.expanduser() / "versions").get(matches[0])
    except (VersionNotFound, CorruptVersion) as e:
        print(f"potluck export: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    try:
        atomic_save(state, args.output)
    except OSError as e:
        raise ConfigError(f"cannot write {args.output}: {e.strerror}") from None
    round_ = next(e["round"] for e in entries if e["version"] == matches[0])
    print(f"wrote {args.output}: version {matches[0]} (round {round_})")
    return 0
