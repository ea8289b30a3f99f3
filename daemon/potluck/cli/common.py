"""What every command group shares: the one-line usage error, the --data-dir and query flags, the
argument types, the call to a running node's control API, and the name of a run's score."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from potluck.errors import ConfigError

DEFAULT_DATA_DIR = "~/.potluck"
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


Commands = Any  # argparse's _SubParsersAction (private): what add_parser is called on


def data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("POTLUCK_DATA_DIR", DEFAULT_DATA_DIR)),
        help=f"node state: key, api address, history (env POTLUCK_DATA_DIR, default {DEFAULT_DATA_DIR})",
    )


def query_args(parser: argparse.ArgumentParser) -> None:
    data_dir_arg(parser)
    rpc_args(parser)
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def rpc_args(parser: argparse.ArgumentParser, what: str = "control API") -> None:
    parser.add_argument("--rpc", metavar="HOST:PORT", help=f"{what} address (default: read <data-dir>/api)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the node (default 5)")


def call_node(args: argparse.Namespace, call: Callable[[Any], Any]) -> tuple[str, dict[str, Any]]:
    """(address, reply as a dict) of a call to the running node's control API (--data-dir/--rpc).

    Raises ConfigError when no node runs there, NodeUnreachable when it does not answer.
    """
    from potluck.rpc.client import ControlClient, resolve_address
    from potluck.rpc.jsonify import message_to_dict

    address = resolve_address(args.rpc, args.data_dir.expanduser())
    with ControlClient(address, timeout=args.timeout) as client:
        return address, message_to_dict(call(client))


def ask(args: argparse.Namespace, call: Callable[[Any], Any]) -> dict[str, Any]:
    """Call the running node's control API; exit 1 with one line if it does not answer."""
    from potluck.rpc.client import NodeUnreachable

    try:
        return call_node(args, call)[1]
    except NodeUnreachable as e:
        print(f"potluck {args.command}: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def show(args: argparse.Namespace, call: Callable[[Any], Any], key: str | None, table: Callable) -> int:
    """Ask the node and print its reply (or the reply's ``key``) as JSON with --json, else as a table."""
    reply = ask(args, call)
    value = reply if key is None else reply[key]
    print(json.dumps(value, indent=2) if args.json else table(value))
    return 0


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None


def density(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1]: {text!r}")
    return value


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def output_file(text: str) -> Path:
    """``-o FILE`` of every command that writes one: its folder must exist (a typo creates nothing)."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"folder {str(path.parent)!r} does not exist (create it first)")
    return path


def run_metric(data_dir: Path, run_id: str | None) -> tuple[str, bool]:
    """The name of the run's held-out score and whether higher is better (potluck.tasks.metric), from the
    manifest the node in ``data_dir`` keeps for ``run_id``; ``("accuracy", True)`` when it keeps none
    (the history and the status reply store the score as ``accuracy`` whatever its name)."""
    from potluck.runfiles import cached_manifest
    from potluck.tasks import TaskError, get_task, metric

    manifest = cached_manifest(data_dir.expanduser(), run_id) if run_id else None
    if manifest is None:
        return "accuracy", True
    try:
        return metric(get_task(manifest.task, manifest.task_args))
    except TaskError:
        return "score", True
