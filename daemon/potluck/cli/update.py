"""`potluck update make|inspect|publish|list|apply`: signed sparse updates as files, and a node's."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from potluck.cli.common import (
    Commands,
    Parser,
    ask,
    data_dir_arg,
    density,
    non_negative_int,
    query_args,
    read_file,
)
from potluck.cli.format import format_update, format_updates
from potluck.errors import ConfigError


def add_parsers(commands: Commands) -> None:
    update = commands.add_parser("update", help="make, inspect, publish and apply signed sparse updates")
    sub = update.add_subparsers(dest="update_command", required=True, metavar="ACTION", parser_class=Parser)
    make = sub.add_parser(
        "make",
        help="sign a sparse update: MODEL minus BASE (offline)",
        description="Make a signed sparse update.",
    )
    make.set_defaults(handler=cmd_update_make)
    data_dir_arg(make)
    make.add_argument(
        "--base", type=Path, required=True, metavar="BASE.safetensors", help="the version you started from"
    )
    make.add_argument(
        "--model", type=Path, required=True, metavar="TUNED.safetensors", help="your fine-tuned model"
    )
    make.add_argument("--density", type=density, default=0.01, help="fraction of entries sent (default 0.01)")
    make.add_argument(
        "--values", choices=["int8", "fp16"], default="int8", help="value format (default int8)"
    )
    make.add_argument("--round", type=non_negative_int, default=0, help="round the update is for (default 0)")
    make.add_argument("--run", default="default", help="run name (default: default)")
    make.add_argument(
        "--samples", type=non_negative_int, default=1, help="training samples behind it (merge weight)"
    )
    make.add_argument("--seq", type=non_negative_int, help="sequence number (default: unix time in ms)")
    make.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="where to write the update"
    )

    inspect = sub.add_parser(
        "inspect", help="show what an update says and whether it is valid (exit 1 if not)"
    )
    inspect.set_defaults(handler=cmd_update_inspect)
    inspect.add_argument("file", type=Path, metavar="FILE")
    inspect.add_argument("--json", action="store_true", help="print JSON")

    publish = sub.add_parser(
        "publish", help="hand an update to the running node, which validates and announces it"
    )
    publish.set_defaults(handler=cmd_update_publish)
    publish.add_argument("file", type=Path, metavar="FILE")
    query_args(publish)

    listing = sub.add_parser("list", help="the updates a running node holds")
    listing.set_defaults(handler=cmd_update_list)
    query_args(listing)

    apply = sub.add_parser("apply", help="write BASE + update to a new model file")
    apply.set_defaults(handler=cmd_update_apply)
    apply.add_argument("--base", type=Path, required=True, metavar="BASE.safetensors")
    apply.add_argument("file", type=Path, metavar="FILE")
    apply.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.safetensors")


def cmd_update_make(args: argparse.Namespace) -> int:
    from potluck.atomic import atomic_write_bytes
    from potluck.cli.update_files import make_update
    from potluck.datadir import prepare_data_dir
    from potluck.identity import load_or_create

    identity = load_or_create(prepare_data_dir(args.data_dir))
    seq = args.seq if args.seq is not None else time.time_ns() // 1_000_000
    try:
        data = make_update(
            args.base,
            args.model,
            identity,
            density=args.density,
            values=args.values,
            round=args.round,
            run=args.run,
            seq=seq,
            sample_count=args.samples,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from None
    atomic_write_bytes(args.output, data)
    print(f"wrote {args.output}: {len(data)} bytes, round {args.round}, seq {seq}")
    return 0


def cmd_update_inspect(args: argparse.Namespace) -> int:
    from potluck.cli.update_files import inspect_update

    info = inspect_update(read_file(args.file))
    print(json.dumps(info, indent=2) if args.json else format_update(info))
    if not info["valid"]:
        print(
            f"potluck update inspect: invalid update: {info['reason']}: {info.get('detail', '')}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_update_publish(args: argparse.Namespace) -> int:
    data = read_file(args.file)
    reply = ask(args, lambda c: c.publish(data))
    if args.json:
        print(json.dumps(reply, indent=2))
    elif reply["accepted"]:
        print(f"published {reply['update_id']}")
    if not reply["accepted"]:
        print(f"potluck update publish: rejected: {reply['reason']}: {reply['detail']}", file=sys.stderr)
        return 1
    return 0


def cmd_update_list(args: argparse.Namespace) -> int:
    updates = ask(args, lambda c: c.updates())["updates"]
    print(json.dumps(updates, indent=2) if args.json else format_updates(updates))
    return 0


def cmd_update_apply(args: argparse.Namespace) -> int:
    from potluck.cli.update_files import apply_update_file
    from potluck.updates.reasons import UpdateRejected

    try:
        version = apply_update_file(args.base, read_file(args.file), args.output)
    except UpdateRejected as e:
        print(f"potluck update apply: {e.reason.value}: {e.detail}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from None
    print(f"wrote {args.output}: version {version}")
    return 0
