"""The `potluck` command: the parser assembled from one module per command group.

node (run, join, status, peers, id), run (init, pretrain), update (make, inspect, publish, list, apply),
history (log, export, generate), vcs (show, diff, blame, verify, gc), revert, fork, modules (module
publish|add|export, modules), demo, watch (status --watch, dashboard); the tables people read are in
cli.format.

Exit codes: 0 ok, 1 runtime failure (e.g. the node did not answer), 2 usage or configuration error.
Heavy imports (torch, hivemind) happen only in the commands that need them, so `status` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from potluck.cli import demo, fork, history, modules, node, revert, run, update, vcs, watch
from potluck.cli.common import EXIT_USAGE, Parser
from potluck.errors import ConfigError
from potluck.observe.logs import configure as configure_logging

__all__ = ["build_parser", "main"]


class _Version(argparse.Action):
    """argparse's "version" action, but the version is looked up only when asked for (it is slow)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from potluck import __version__

        print(f"potluck {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="potluck", description="Build one model together: a P2P federated collaboration node."
    )
    parser.add_argument("--version", action=_Version, help="show the program's version number and exit")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="what a node logs to stderr (default INFO)",
    )
    parser.add_argument(
        "--log-format",
        default="human",
        choices=["human", "json"],
        help="human lines (default), or one JSON object a line: time, level, node, run, round, event, fields",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for group in (node, run, history, vcs, revert, fork, update, modules, demo, watch):
        group.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format, sys.stderr)
    try:
        return args.handler(args)
    except ConfigError as e:
        print(f"potluck {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `potluck peers | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
