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
    call_node,
    data_dir_arg,
    density,
    non_negative_int,
    output_file,
    query_args,
    read_file,
    rpc_args,
    show,
)
from potluck.cli.format import format_update, format_updates
from potluck.errors import ConfigError


def add_parsers(commands: Commands) -> None:
    update = commands.add_parser(
        "update",
        help="make, inspect, publish and apply signed sparse updates",
        description="Signed sparse updates as files (make, inspect, apply) and on a running node.",
    )
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
    make.add_argument(
        "--round",
        type=non_negative_int,
        help="round the update is for (default: the round the running node takes updates for)",
    )
    make.add_argument("--run", metavar="RUN_ID", help="the run (default: the running node's run)")
    make.add_argument(
        "--samples", type=non_negative_int, default=1, help="training samples behind it (merge weight)"
    )
    make.add_argument("--seq", type=non_negative_int, help="sequence number (default: unix time in ms)")
    make.add_argument(
        "-o", "--output", type=output_file, required=True, metavar="FILE", help="where to write the update"
    )
    rpc_args(make, "without --run and --round: the running node's control API")

    inspect = sub.add_parser(
        "inspect",
        help="show what an update says and whether it is valid (exit 1 if not)",
        description="Show an update's header and tensors and check it (offline; exit 1 if invalid).",
    )
    inspect.set_defaults(handler=cmd_update_inspect)
    inspect.add_argument("file", type=Path, metavar="FILE", help="the update (`potluck update make`)")
    inspect.add_argument("--json", action="store_true", help="print JSON")

    publish = sub.add_parser(
        "publish",
        help="hand an update to the running node, which validates and announces it",
        description="Hand an update to the running node: it validates, holds and announces it.",
    )
    publish.set_defaults(handler=cmd_update_publish)
    publish.add_argument("file", type=Path, metavar="FILE", help="the update (`potluck update make`)")
    query_args(publish)

    listing = sub.add_parser(
        "list", help="the updates a running node holds", description="List the updates a running node holds."
    )
    listing.set_defaults(handler=cmd_update_list)
    query_args(listing)

    apply = sub.add_parser(
        "apply",
        help="write BASE + update to a new model file",
        description="Check an update against BASE and write BASE + update to a new model file (offline).",
    )
    apply.set_defaults(handler=cmd_update_apply)
    apply.add_argument(
        "--base",
        type=Path,
        required=True,
        metavar="BASE.safetensors",
        help="the version the update is against",
    )
    apply.add_argument("file", type=Path, metavar="FILE", help="the update")
    apply.add_argument(
        "-o", "--output", type=output_file, required=True, metavar="OUT.safetensors", help="the new model"
    )


def cmd_update_make(args: argparse.Namespace) -> int:
    from potluck.atomic import atomic_write_bytes
    from potluck.cli.update_files import make_update
    from potluck.datadir import prepare_data_dir
    from potluck.identity import load_or_create

    run, round_, asked = run_and_round(args)
    identity = load_or_create(prepare_data_dir(args.data_dir))
    seq = args.seq if args.seq is not None else time.time_ns() // 1_000_000
    try:
        data = make_update(
            args.base,
            args.model,
            identity,
            density=args.density,
            values=args.values,
            round=round_,
            run=run,
            seq=seq,
            sample_count=args.samples,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from None
    try:
        atomic_write_bytes(args.output, data)
    except OSError as e:
        raise ConfigError(f"cannot write {args.output}: {e.strerror}") from None
    print(
        f"wrote {args.output}: {len(data)} bytes, round {round_}, seq {seq}"
        + (
            f" ({'round' if args.run else f'run {run[:16]} and round'} from the node at {asked})"
            if asked
            else ""
        )
    )
    return 0


# the round a node takes updates for: the current one while collecting (or before round 0), else the next
_CURRENT_ROUND_PHASES = ("collecting", "waiting", "idle")


def run_and_round(args: argparse.Namespace) -> tuple[str, int, str | None]:
    """--run and --round, or what the running node takes updates for (and its address) when not given."""
    if args.run is not None and args.round is not None:
        return args.run, args.round, None
    from potluck.rpc.client import NodeUnreachable

    try:
        address, status = call_node(args, lambda c: c.status())
    except (ConfigError, NodeUnreachable):
        raise ConfigError(
            "no running node answered (--data-dir/--rpc) to take --run and --round from: "
            "give --run RUN_ID --round N"
        ) from None
    run = args.run if args.run is not None else status["run_id"] or status["run"]
    if args.round is not None:
        return run, args.round, address
    current = status["phase"] in _CURRENT_ROUND_PHASES
    return run, status["round"] if current else status["round"] + 1, address


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
    return show(args, lambda c: c.updates(), "updates", format_updates)


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
