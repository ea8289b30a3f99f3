"""`potluck log` and `export`: the committed versions a node keeps in its data dir (no node needed)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from potluck.cli.common import Commands, data_dir_arg
from potluck.cli.format import format_log
from potluck.errors import ConfigError


def add_parsers(commands: Commands) -> None:
    log = commands.add_parser("log", help="the committed versions of this node's run (reads <data-dir>)")
    log.set_defaults(handler=cmd_log)
    data_dir_arg(log)
    log.add_argument("--json", action="store_true", help="print JSON")

    export = commands.add_parser("export", help="write a committed version to a safetensors file")
    export.set_defaults(handler=cmd_export)
    data_dir_arg(export)
    export.add_argument("--version", help="version hash or its prefix (default: the latest)")
    export.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL.safetensors")


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
        versions = [e["version"] for e in history.log()]
    if not versions:
        raise ConfigError("no committed version yet")
    wanted = args.version or versions[-1]
    matches = sorted({v for v in versions if v.startswith(wanted)})
    if len(matches) != 1:
        raise ConfigError(f"--version {wanted!r} matches {len(matches)} committed versions")
    try:
        state = VersionStore(args.data_dir.expanduser() / "versions").get(matches[0])
    except (VersionNotFound, CorruptVersion) as e:
        print(f"potluck export: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    atomic_save(state, args.output)
    print(f"wrote {args.output}: version {matches[0]}")
    return 0
