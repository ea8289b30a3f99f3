"""`potluck init`: create a run (its signed manifest and genesis weights); `potluck pretrain`: train a
task's base model on its whole training data, to give `init --genesis`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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

_VALUES_HELP = "value encoding of updates (default int8; sign: 1 bit a value, error feedback keeps the rest)"
_SCOPE_HELP = "top-k of each tensor (default) or of the whole model (tensors with none are left out)"


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
    init.add_argument(
        "--genesis",
        type=Path,
        metavar="FILE.safetensors",
        help="start from these weights (e.g. `potluck pretrain`'s) instead of the task's seeded init; "
        "they must be the task's model: every tensor's name, shape and dtype",
    )
    init.add_argument("--round-seconds", type=positive_float, default=60.0, help="round length (default 60)")
    init.add_argument(
        "--start-in", type=float, default=0.0, metavar="SECONDS", help="round 0 starts this much later"
    )
    init.add_argument("--density", type=density, default=0.01, help="top-k density of updates (default 0.01)")
    init.add_argument(
        "--start-density", type=density, help="a sparse start: this density in the first rounds"
    )
    init.add_argument(
        "--start-rounds", type=positive_int, help="rounds of the sparse start (--start-density)"
    )
    init.add_argument("--values", choices=["int8", "fp16", "sign"], default="int8", help=_VALUES_HELP)
    init.add_argument("--topk-scope", choices=["tensor", "model"], default="tensor", help=_SCOPE_HELP)
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
        help="how updates are merged: weighted_mean (default), history_clip (the recommended robust "
        "rule, gathered), norm_filter (the robust rule for a sliced merge), mean, task_arithmetic, ties, "
        "dare, trimmed_mean, coordinate_median, centered_clip, multi_krum, geometric_median, or "
        "package.module:factory",
    )
    init.add_argument(
        "--strategy-arg", action="append", default=[], metavar="KEY=VALUE", help="strategy argument"
    )
    init.add_argument(
        "--placement",
        choices=("auto", "gathered", "sliced", "allreduce", "dense"),
        default="auto",
        help="where the merge runs: auto (default: the fewest bytes, per attempt; dense updates of "
        "weighted_mean: dense), or fixed (allreduce, dense: weighted_mean only; sliced: weighted_mean "
        "and coordinate strategies)",
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
        "--group",
        action="append",
        default=[],
        metavar="PATTERN:OPTIONS",
        help="a parameter group, first match wins: tensor-name glob, then strategy=NAME, freeze, "
        "max_density=X, max_rank=N (e.g. 'transformer.wte.*:freeze'); repeatable",
    )
    init.add_argument(
        "--max-rank",
        type=positive_int,
        default=64,
        metavar="N",
        help="the largest rank of a low-rank (LoRA) update entry, unless its group sets one (default 64)",
    )
    init.add_argument(
        "--probe",
        type=non_negative_int,
        default=0,
        metavar="PER_CLASS",
        help="keepers score every update on the task's public probe set (PER_CLASS samples a class; the "
        "manifest names it by hash) and drop those the merge is better without (default 0: off; digits)",
    )
    init.add_argument(
        "--probe-frac",
        type=positive_float,
        default=0.5,
        metavar="X",
        help="the probe rule's cut: drop while the lowest score is below -X x the median |score| (0.5)",
    )
    init.add_argument(
        "--probe-floor",
        type=float,
        default=0.0,
        metavar="Y",
        help="and only below -Y (probe loss units; default 0: off): spares IID honest updates' noise",
    )
    init.add_argument(
        "--probe-record",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="keep each author's probe record (its scores, decayed by DECAY a round; in [0, 1), default 0: "
        "off): an author whose record is positive is cut only at -STRICT x the median (bench/README.md)",
    )
    init.add_argument(
        "--probe-strict",
        type=positive_float,
        default=1.0,
        metavar="STRICT",
        help="with --probe-record: the cut of an author whose record is positive (default 1.0)",
    )
    init.add_argument(
        "-o",
        "--output",
        type=output_file,
        required=True,
        metavar="RUN.toml",
        help="where to write the manifest; the genesis weights go beside it (RUN.genesis.safetensors)",
    )

    pre = commands.add_parser(
        "pretrain",
        help="train a task's base model on all its training data (a genesis for `init --genesis`)",
        description="Train the task's seeded init for --steps steps on every shard of its training data "
        "(never the held-out split), report the held-out score before and after, write the weights.",
    )
    pre.set_defaults(handler=cmd_pretrain)
    pre.add_argument(
        "--task", required=True, help="built-in task (lm, digits, ...) or package.module:factory"
    )
    pre.add_argument(
        "--task-arg", action="append", default=[], metavar="KEY=VALUE", help="task factory argument"
    )
    pre.add_argument("--steps", type=positive_int, required=True, help="training steps")
    pre.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the init and of the batches (default 0)"
    )
    pre.add_argument("--json", action="store_true", help="print one JSON object at the end")
    pre.add_argument(
        "-o",
        "--output",
        type=output_file,
        required=True,
        metavar="BASE.safetensors",
        help="the file to write",
    )


def cmd_init(args: argparse.Namespace) -> int:
    from potluck.datadir import prepare_data_dir
    from potluck.groups import GroupError, GroupRules
    from potluck.identity import load_or_create
    from potluck.manifest import ManifestError
    from potluck.merge import StrategyError
    from potluck.merge.probe import ProbeError
    from potluck.rounds.merging import run_merge
    from potluck.rounds.placement import PlacementError, check_policy
    from potluck.runfiles import write_run
    from potluck.tasks import TaskError
    from potluck.tasks.probing import probe_digest

    task_args = _key_values(args.task_arg, "--task-arg")
    strategy_args = _key_values(args.strategy_arg, "--strategy-arg")
    try:
        groups = GroupRules(args.group)
    except GroupError as e:
        raise ConfigError(f"--group: {e}") from None
    try:
        how = run_merge(args.strategy, strategy_args, groups)
    except StrategyError as e:
        raise ConfigError(f"--strategy {args.strategy} / --group: {e}") from None
    probe: dict[str, str | int | float] = {}
    if args.probe:  # the hash of the set this install's task hands: every node checks its own against it
        try:
            probe = {"set": probe_digest(args.task, task_args, args.probe), "frac": args.probe_frac,
                     "floor": args.probe_floor, "per_class": args.probe}  # fmt: skip
            if args.probe_record:  # no keys without a record: such a run reads as before records
                probe |= {"record": args.probe_record, "strict": args.probe_strict}
        except (ProbeError, TaskError) as e:
            raise ConfigError(f"--probe: {e}") from None
    try:
        mean, coordinate = how.mean and not probe, how.coordinate and not probe  # a probe merges gathered
        check_policy(args.placement, mean, coordinate, repr(args.strategy), how.history, bool(probe))
    except PlacementError as e:
        raise ConfigError(f"--placement {args.placement}: {e}") from None
    if args.admission == "allowlist" and not args.allow:
        raise ConfigError("--admission allowlist needs --allow NODE_ID ...")
    genesis_state = load_genesis(args.genesis) if args.genesis is not None else None
    identity = load_or_create(prepare_data_dir(args.data_dir))
    try:
        run = write_run(
            args.output,
            args.task,
            creator=identity,
            task_args=task_args,
            seed=args.seed,
            genesis_state=genesis_state,
            round_seconds=args.round_seconds,
            start_time=time.time() + args.start_in,
            density=args.density,
            start_density=args.start_density or 0.0,
            start_rounds=args.start_rounds or 0,
            values=args.values,
            topk_scope=args.topk_scope,
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
            max_rank=args.max_rank,
            groups=tuple(args.group),
            probe=probe,
        )
    except TaskError as e:
        raise ConfigError(f"--genesis {args.genesis}: {e}" if genesis_state is not None else str(e)) from None
    except ManifestError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"cannot write {args.output}: {e.strerror}") from None
    source = f", from {args.genesis}" if genesis_state is not None else ""
    print(
        f"run {run.manifest.run_id}\n"
        f"wrote {args.output} and {run.genesis_path} (genesis {run.genesis_hash[:16]}{source})"
    )
    if genesis_state is not None:  # the seed cannot rebuild it (potluck.joining.ensure_genesis)
        print(
            f"a node started with --manifest {args.output} needs both files; one that joins with --run "
            "RUN_ID fetches the genesis from its peers"
        )
    return 0


def load_genesis(path: Path) -> dict:
    """The weights of ``--genesis FILE``, or a one-line ConfigError."""
    from potluck.store.versions import CorruptVersion, load_state

    try:
        return load_state(path)
    except FileNotFoundError:
        raise ConfigError(f"--genesis {path}: no such file") from None
    except (CorruptVersion, OSError) as e:
        raise ConfigError(f"--genesis {path}: not a safetensors file ({e})") from None


def cmd_pretrain(args: argparse.Namespace) -> int:
    from potluck.store.versions import atomic_save
    from potluck.tasks import TaskError, get_task, is_trainable, metric, pretrain, scores

    task_args = _key_values(args.task_arg, "--task-arg")
    try:
        task = get_task(args.task, task_args)
    except TaskError as e:
        raise ConfigError(str(e)) from None
    if not is_trainable(task):
        raise ConfigError(f"task {args.task!r} cannot train (it has no local_data/train/evaluate)")
    name, higher = metric(task)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    before = scores(task, task.init_state(args.seed))
    say(f"pretraining {args.task} ({task_args or 'default size'}), seed {args.seed}: {args.steps} steps")
    started = time.monotonic()
    every = max(1, args.steps // 10)

    def progress(step: int) -> None:
        if step % every == 0 or step == args.steps:
            say(f"  step {step}/{args.steps} ({time.monotonic() - started:.1f}s)")

    try:
        state = pretrain(task, steps=args.steps, seed=args.seed, progress=progress)
    except TaskError as e:
        raise ConfigError(str(e)) from None
    seconds = time.monotonic() - started
    after = scores(task, state)
    meta = {
        "task": args.task,
        "task_args": json.dumps(task_args),
        "seed": str(args.seed),
        "steps": str(args.steps),
    }
    try:
        atomic_save(state, args.output, metadata=meta)
    except OSError as e:
        raise ConfigError(f"cannot write {args.output}: {e.strerror}") from None
    if args.json:
        print(json.dumps({
            "task": args.task, "task_args": task_args, "seed": args.seed, "steps": args.steps,
            "seconds": round(seconds, 2), "metric": name, "before": before, "after": after,
            "output": str(args.output),
        }))  # fmt: skip
        return 0
    better = "higher" if higher else "lower"
    print(f"held-out {name} ({better} is better), before -> after {args.steps} steps in {seconds:.0f}s:")
    for part in before:
        print(f"  {part:<10} {before[part]:.3f} -> {after[part]:.3f}")
    same = "".join(f" --task-arg {item}" for item in args.task_arg)
    print(
        f"wrote {args.output}; a run from it: potluck init --task {args.task}{same} --genesis {args.output}"
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
