"""`potluck demo`: a whole run on this machine (the work is in potluck.demo)."""

from __future__ import annotations

import argparse

from potluck.cli.common import Commands, density, positive_float, positive_int
from potluck.errors import ConfigError


def add_parsers(commands: Commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="a whole run on this machine: a keeper, N contributors with non-IID data, R rounds",
        description="Start a local run on 127.0.0.1 (real processes), show it round by round, stop it.",
    )
    demo.set_defaults(handler=cmd_demo)
    demo.add_argument("--contributors", type=_node_count, default=4, help="contributors (default 4)")
    demo.add_argument("--rounds", type=positive_int, default=5, help="rounds to run (default 5)")
    demo.add_argument("--round-seconds", type=positive_float, default=16.0, help="round length (default 16)")
    demo.add_argument("--task", default="digits", help="the run's task (default digits)")
    demo.add_argument(
        "--local-steps", type=positive_int, default=40, help="training steps per round (default 40)"
    )
    demo.add_argument("--density", type=density, default=0.05, help="top-k density of updates (default 0.05)")
    demo.add_argument("--json", action="store_true", help="print one JSON object at the end")


def _node_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 32:
        raise argparse.ArgumentTypeError(f"expected 1..32, got {text!r}")
    return int(text)


def cmd_demo(args: argparse.Namespace) -> int:
    from potluck.demo import run_demo
    from potluck.tasks import TaskError

    try:
        return run_demo(
            contributors=args.contributors,
            rounds=args.rounds,
            round_seconds=args.round_seconds,
            task=args.task,
            local_steps=args.local_steps,
            density=args.density,
            as_json=args.json,
        )
    except TaskError as e:
        raise ConfigError(str(e)) from None
