"""`potluck demo`: a whole run on this machine (the work is in potluck.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from potluck.cli.common import Commands, density, positive_float, positive_int
from potluck.errors import ConfigError


def add_parsers(commands: Commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="a whole run on this machine: a keeper, N contributors with non-IID data, R rounds",
        description="Start a local run on 127.0.0.1 (real processes), show it round by round, stop it.",
    )
    demo.set_defaults(handler=cmd_demo)
    demo.add_argument("--task", default="digits", help="the run's task (default digits; or lm, toy, ...)")
    demo.add_argument("--contributors", type=_node_count, help=_default("contributors", "contributors"))
    demo.add_argument("--rounds", type=positive_int, default=5, help="rounds to run (default 5)")
    demo.add_argument("--round-seconds", type=positive_float, help=_default("round_seconds", "round length"))
    demo.add_argument(
        "--local-steps", type=positive_int, help=_default("local_steps", "training steps per round")
    )
    demo.add_argument("--density", type=density, help=_default("density", "top-k density of updates"))
    base = demo.add_mutually_exclusive_group()
    base.add_argument(
        "--genesis",
        type=Path,
        metavar="FILE.safetensors",
        help="start the run from these weights (`potluck pretrain -o FILE`) instead of the seeded init",
    )
    base.add_argument(
        "--pretrain-steps",
        type=positive_int,
        metavar="N",
        help="first pre-train the genesis for N steps on all the task's training data",
    )
    demo.add_argument("--json", action="store_true", help="print one JSON object at the end")


# Per task, what a flag left out means: the lm task's model is 11x the digits MLP and trains on one
# of three domains, so its demo has 3 contributors, longer rounds and denser updates (2 cores).
DEFAULTS: dict[str, dict[str, float]] = {
    "digits": {"contributors": 4, "round_seconds": 16.0, "local_steps": 40, "density": 0.05},
    "lm": {"contributors": 3, "round_seconds": 24.0, "local_steps": 40, "density": 0.1},
}


def _default(key: str, what: str) -> str:
    shown = ", ".join(f"{task} {values[key]:g}" for task, values in DEFAULTS.items())
    return f"{what} (default: {shown}; other tasks as digits)"


def _node_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 32:
        raise argparse.ArgumentTypeError(f"expected 1..32, got {text!r}")
    return int(text)


def cmd_demo(args: argparse.Namespace) -> int:
    from potluck.demo import run_demo
    from potluck.tasks import TaskError

    defaults = DEFAULTS.get(args.task, DEFAULTS["digits"])

    def given(key: str) -> float:
        value = getattr(args, key)
        return defaults[key] if value is None else value

    genesis = None
    if args.genesis is not None:
        from potluck.cli.run import load_genesis

        genesis = load_genesis(args.genesis)
    try:
        return run_demo(
            contributors=int(given("contributors")),
            rounds=args.rounds,
            round_seconds=given("round_seconds"),
            task=args.task,
            local_steps=int(given("local_steps")),
            density=given("density"),
            as_json=args.json,
            genesis=genesis,
            pretrain_steps=args.pretrain_steps,
        )
    except TaskError as e:
        raise ConfigError(str(e)) from None
