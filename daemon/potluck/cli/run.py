"""`potluck init`: create a run (its signed manifest and genesis weights)."""

from __future__ import annotations

import argparse
import time

from potluck.cli.common import (
    Commands,
    data_dir_arg,
    density,
    non_negative_int,
    output_file,
    positive_float,
    positive_int,
)
from potluck.errors import ConfigError


def add_parsers(commands: Commands) -> None:
    init = commands.add_parser(
        "init", help="create a run: a signed manifest and its genesis weights", description="Create a run."
    )
    init.set_defaults(handler=cmd_init)
    data_dir_arg(init)
    init.add_argument("--task", required=True, help="built-in task (toy, ...) or package.module:factory")
    init.add_argument(
        "--task-arg", action="append", default=[], metavar="KEY=VALUE", help="task factory argument"
    )
    init.add_argument("--seed", type=non_negative_int, default=0, help="seed of the genesis weights")
    init.add_argument("--round-seconds", type=positive_float, default=60.0, help="round length (default 60)")
    init.add_argument(
        "--start-in", type=float, default=0.0, metavar="SECONDS", help="round 0 starts this much later"
    )
    init.add_argument("--density", type=density, default=0.01, help="top-k density of updates (default 0.01)")
    init.add_argument(
        "--values", choices=["int8", "fp16"], default="int8", help="value encoding of updates (default int8)"
    )
    init.add_argument(
        "--quorum", type=positive_int, default=1, help="signatures needed to commit (default 1)"
    )
    init.add_argument(
        "--outer-lr", type=positive_float, default=1.0, help="V+1 = V + lr * mean delta (default 1)"
    )
    init.add_argument(
        "--weight-cap", type=positive_int, default=10_000, help="cap on an update's sample weight"
    )
    init.add_argument("--max-update-norm", type=positive_float, help="reject updates with a larger L2 norm")
    init.add_argument(
        "--strategy",
        default="weighted_mean",
        help="how updates are merged: weighted_mean (default), norm_filter "
        "(the recommended robust rule), mean, task_arithmetic, ties, dare, trimmed_mean, "
        "coordinate_median, centered_clip, multi_krum, geometric_median, or package.module:factory",
    )
    init.add_argument(
        "--strategy-arg", action="append", default=[], metavar="KEY=VALUE", help="strategy argument"
    )
    init.add_argument(
        "--placement",
        choices=("auto", "gathered", "sliced", "allreduce"),
        default="auto",
        help="where the merge runs: auto (default: the fewest bytes, per attempt), or fixed "
        "(allreduce: weighted_mean only; sliced: weighted_mean and coordinate strategies)",
    )
    init.add_argument(
        "--pacing",
        choices=("ready", "clock"),
        default="ready",
        help="when a round stops collecting: ready (default: once every contributor that declared itself "
        "has published, or --target-samples are in; --round-seconds is the upper bound) or clock (every "
        "round lasts --round-seconds)",
    )
    init.add_argument(
        "--target-samples",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="with --pacing ready, also close a round once its updates carry N samples (default 0: off)",
    )
    init.add_argument(
        "--probation-rounds",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="a new author's updates weigh 0 until it contributed to N committed rounds (default 0: off)",
    )
    init.add_argument(
        "--admission",
        choices=["open", "allowlist"],
        default="open",
        help="whose updates are admitted: anybody's (default) or only those of --allow",
    )
    init.add_argument(
        "--allow", nargs="+", default=[], metavar="NODE_ID", help="admitted authors (allowlist)"
    )
    init.add_argument(
        "-o",
        "--output",
        type=output_file,
        required=True,
        metavar="RUN.toml",
        help="where to write the manifest; the genesis weights go beside it (RUN.genesis.safetensors)",
    )


def cmd_init(args: argparse.Namespace) -> int:
    from potluck.datadir import prepare_data_dir
    from potluck.identity import load_or_create
    from potluck.manifest import ManifestError
    from potluck.merge import DEFAULT_STRATEGY, StrategyError, get_strategy, supports_columns
    from potluck.rounds.placement import PlacementError, check_policy
    from potluck.runfiles import write_run
    from potluck.tasks import TaskError

    task_args = _key_values(args.task_arg, "--task-arg")
    strategy_args = _key_values(args.strategy_arg, "--strategy-arg")
    try:
        strategy = get_strategy(args.strategy, strategy_args)
    except StrategyError as e:
        raise ConfigError(f"--strategy {args.strategy}: {e}") from None
    try:
        mean = args.strategy == DEFAULT_STRATEGY
        check_policy(args.placement, mean, supports_columns(strategy), repr(args.strategy))
    except PlacementError as e:
        raise ConfigError(f"--placement {args.placement}: {e}") from None
    if args.admission == "allowlist" and not args.allow:
        raise ConfigError("--admission allowlist needs --allow NODE_ID ...")
    identity = load_or_create(prepare_data_dir(args.data_dir))
    try:
        run = write_run(
            args.output,
            args.task,
            creator=identity,
            task_args=task_args,
            seed=args.seed,
            round_seconds=args.round_seconds,
            start_time=time.time() + args.start_in,
            density=args.density,
            values=args.values,
            quorum=args.quorum,
            outer_lr=args.outer_lr,
            weight_cap=args.weight_cap,
            max_update_norm=args.max_update_norm,
            admission=args.admission,
            allow=tuple(args.allow),
            strategy=args.strategy,
            strategy_args=strategy_args,
            probation_rounds=args.probation_rounds,
            placement=args.placement,
            pacing=args.pacing,
            target_samples=args.target_samples,
        )
    except (TaskError, ManifestError) as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"cannot write {args.output}: {e.strerror}") from None
    print(
        f"run {run.manifest.run_id}\n"
        f"wrote {args.output} and {run.genesis_path} (genesis {run.genesis_hash[:16]})"
    )
    return 0


def _key_values(items: list[str], flag: str) -> dict[str, str | int | float]:
    out: dict[str, str | int | float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad {flag} {item!r}: expected KEY=VALUE")
        out[key] = _number_or_str(value)
    return out


def _number_or_str(text: str) -> str | int | float:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
