"""The `potluck` command.

Exit codes: 0 ok, 1 runtime failure (e.g. the node did not answer), 2 usage or configuration error.
Heavy imports (torch, hivemind) happen only in the commands that need them, so `status` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from potluck import __version__
from potluck.errors import ConfigError
from potluck.rpc.address import DEFAULT_RPC_LISTEN

DEFAULT_DATA_DIR = "~/.potluck"
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("POTLUCK_DATA_DIR", DEFAULT_DATA_DIR)),
        help=f"node state: key, api address, history (env POTLUCK_DATA_DIR, default {DEFAULT_DATA_DIR})",
    )


def _query_args(parser: argparse.ArgumentParser) -> None:
    _data_dir_arg(parser)
    parser.add_argument(
        "--rpc", metavar="HOST:PORT", help="control API address (default: read <data-dir>/api)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the node (default 5)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="potluck", description="Build one model together: a P2P federated collaboration node."
    )
    parser.add_argument("--version", action="version", version=f"potluck {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser(
        "run", help="run a node until SIGINT/SIGTERM", description="Run a potluck node."
    )
    _data_dir_arg(run)
    run.add_argument(
        "--run", default="default", help="name of the run (collaboration) to join (default: default)"
    )
    run.add_argument(
        "--listen",
        nargs="+",
        metavar="MULTIADDR",
        default=None,
        help="libp2p listen addresses (default /ip4/0.0.0.0/tcp/7451: reachable from other machines)",
    )
    run.add_argument(
        "--announce",
        nargs="+",
        metavar="MULTIADDR",
        default=[],
        help="addresses to announce instead of the listen ones (e.g. behind NAT)",
    )
    run.add_argument(
        "--initial-peers",
        nargs="+",
        metavar="MULTIADDR",
        default=[],
        help="bootstrap peers, each ending in /p2p/<peer id>; retried with backoff until one answers",
    )
    run.add_argument(
        "--rpc-listen",
        default=DEFAULT_RPC_LISTEN,
        metavar="HOST:PORT",
        help=f"control API address (default {DEFAULT_RPC_LISTEN}; port 0 picks a free one)",
    )
    run.add_argument(
        "--allow-remote-rpc",
        action="store_true",
        help="allow --rpc-listen on a non-loopback address (the API has no authentication)",
    )
    run.add_argument(
        "--role", default="keeper", choices=["keeper", "contributor"], help="role announced to peers"
    )
    run.add_argument(
        "--manifest",
        type=Path,
        metavar="RUN.toml",
        help="signed rules of a run (`potluck init`) to take part in; or --run RUN_ID fetches them",
    )
    run.add_argument(
        "--model",
        type=Path,
        metavar="FILE.safetensors",
        help="the model version updates are validated against (its hash is the base updates must name)",
    )
    run.add_argument(
        "--allow",
        nargs="+",
        default=[],
        metavar="NODE_ID",
        help="admit updates only from these authors (default: open)",
    )
    run.add_argument(
        "--max-update-norm",
        type=_positive_float,
        metavar="L2",
        help="reject updates whose delta is larger than this",
    )
    run.add_argument(
        "--record-ttl",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="lifetime of this node's peer record; refreshed every third of it (default 30)",
    )
    run.add_argument(
        "--max-updates-per-author",
        type=_non_negative_int,
        default=3,
        metavar="N",
        help="check at most N distinct updates per author and round; more are rate_limited "
        "(default 3, 0: no limit; an honest author sends one)",
    )

    for name, text in (
        ("status", "show a running node's status"),
        ("peers", "list the peers a running node sees"),
    ):
        _query_args(commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + "."))

    ident = commands.add_parser(
        "id", help="print this node's node id and peer id (creates the key if needed)"
    )
    _data_dir_arg(ident)
    ident.add_argument("--json", action="store_true", help="print JSON")

    join = commands.add_parser(
        "join",
        help="contribute: train on your data every round and publish signed sparse updates",
        description="Join a run as a contributor: a node that also trains.",
    )
    _data_dir_arg(join)
    join.add_argument(
        "initial_peers", nargs="*", metavar="MULTIADDR", help="peers of the run, ending in /p2p/<id>"
    )
    join.add_argument("--run", metavar="RUN_ID", help="the run to join (its manifest is fetched from peers)")
    join.add_argument("--manifest", type=Path, metavar="RUN.toml", help="or the run's manifest file")
    join.add_argument("--task", help="the task you expect (refused if the run trains another)")
    join.add_argument(
        "--shard", metavar="I/N", help="train on the I-th of N label shards (non-IID); default: all"
    )
    join.add_argument(
        "--dirichlet", type=_positive_float, metavar="ALPHA", help="with --shard: Dirichlet label mix"
    )
    join.add_argument(
        "--local-steps", type=_positive_int, default=50, help="training steps per round (default 50)"
    )
    join.add_argument("--seed", type=_non_negative_int, default=0, help="seed of local training")
    join.add_argument("--rounds", type=_positive_int, help="leave after contributing this many rounds")
    join.add_argument(
        "--client-mode",
        action="store_true",
        help="behind NAT/firewall: nobody dials us; updates are pushed to keepers, versions pulled",
    )
    join.add_argument("--listen", nargs="+", metavar="MULTIADDR", default=["/ip4/0.0.0.0/tcp/0"])
    join.add_argument(
        "--rpc-listen", default="127.0.0.1:0", metavar="HOST:PORT", help="control API (default: any port)"
    )
    join.add_argument("--record-ttl", type=_positive_float, default=30.0, metavar="SECONDS")
    join.add_argument(
        "--join-timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="give up (exit 2) if the run cannot be reached in this time (default 60)",
    )

    init = commands.add_parser(
        "init", help="create a run: a signed manifest and its genesis weights", description="Create a run."
    )
    _data_dir_arg(init)
    init.add_argument("--task", required=True, help="built-in task (toy, ...) or package.module:factory")
    init.add_argument(
        "--task-arg", action="append", default=[], metavar="KEY=VALUE", help="task factory argument"
    )
    init.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the genesis weights")
    init.add_argument("--round-seconds", type=_positive_float, default=60.0, help="round length (default 60)")
    init.add_argument(
        "--start-in", type=float, default=0.0, metavar="SECONDS", help="round 0 starts this much later"
    )
    init.add_argument(
        "--density", type=_density, default=0.01, help="top-k density of updates (default 0.01)"
    )
    init.add_argument("--values", choices=["int8", "fp16"], default="int8")
    init.add_argument(
        "--quorum", type=_positive_int, default=1, help="signatures needed to commit (default 1)"
    )
    init.add_argument(
        "--outer-lr", type=_positive_float, default=1.0, help="V+1 = V + lr * mean delta (default 1)"
    )
    init.add_argument(
        "--weight-cap", type=_positive_int, default=10_000, help="cap on an update's sample weight"
    )
    init.add_argument("--max-update-norm", type=_positive_float, help="reject updates with a larger L2 norm")
    init.add_argument(
        "--strategy",
        default="weighted_mean",
        help="how updates are merged: weighted_mean (default, inside the all-reduce), norm_filter "
        "(the recommended robust rule), mean, task_arithmetic, ties, dare, trimmed_mean, "
        "coordinate_median, centered_clip, multi_krum, geometric_median, or package.module:factory",
    )
    init.add_argument(
        "--strategy-arg", action="append", default=[], metavar="KEY=VALUE", help="strategy argument"
    )
    init.add_argument(
        "--probation-rounds",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="a new author's updates weigh 0 until it contributed to N committed rounds (default 0: off)",
    )
    init.add_argument("--admission", choices=["open", "allowlist"], default="open")
    init.add_argument(
        "--allow", nargs="+", default=[], metavar="NODE_ID", help="admitted authors (allowlist)"
    )
    init.add_argument("-o", "--output", type=Path, required=True, metavar="RUN.toml")

    log = commands.add_parser("log", help="the committed versions of this node's run (reads <data-dir>)")
    _data_dir_arg(log)
    log.add_argument("--json", action="store_true", help="print JSON")

    export = commands.add_parser("export", help="write a committed version to a safetensors file")
    _data_dir_arg(export)
    export.add_argument("--version", help="version hash or its prefix (default: the latest)")
    export.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL.safetensors")

    _update_commands(
        commands.add_parser("update", help="make, inspect, publish and apply signed sparse updates")
    )

    demo = commands.add_parser(
        "demo",
        help="a whole run on this machine: a keeper, N contributors with non-IID data, R rounds",
        description="Start a local run on 127.0.0.1 (real processes), show it round by round, stop it.",
    )
    demo.add_argument("--contributors", type=_node_count, default=4, help="contributors (default 4)")
    demo.add_argument("--rounds", type=_positive_int, default=5, help="rounds to run (default 5)")
    demo.add_argument("--round-seconds", type=_positive_float, default=16.0, help="round length (default 16)")
    demo.add_argument("--task", default="digits", help="the run's task (default digits)")
    demo.add_argument(
        "--local-steps", type=_positive_int, default=40, help="training steps per round (default 40)"
    )
    demo.add_argument(
        "--density", type=_density, default=0.05, help="top-k density of updates (default 0.05)"
    )
    demo.add_argument("--json", action="store_true", help="print one JSON object at the end")
    return parser


def _update_commands(update: argparse.ArgumentParser) -> None:
    sub = update.add_subparsers(dest="update_command", required=True, metavar="ACTION", parser_class=_Parser)
    make = sub.add_parser(
        "make",
        help="sign a sparse update: MODEL minus BASE (offline)",
        description="Make a signed sparse update.",
    )
    _data_dir_arg(make)
    make.add_argument(
        "--base", type=Path, required=True, metavar="BASE.safetensors", help="the version you started from"
    )
    make.add_argument(
        "--model", type=Path, required=True, metavar="TUNED.safetensors", help="your fine-tuned model"
    )
    make.add_argument(
        "--density", type=_density, default=0.01, help="fraction of entries sent (default 0.01)"
    )
    make.add_argument(
        "--values", choices=["int8", "fp16"], default="int8", help="value format (default int8)"
    )
    make.add_argument(
        "--round", type=_non_negative_int, default=0, help="round the update is for (default 0)"
    )
    make.add_argument("--run", default="default", help="run name (default: default)")
    make.add_argument(
        "--samples", type=_non_negative_int, default=1, help="training samples behind it (merge weight)"
    )
    make.add_argument("--seq", type=_non_negative_int, help="sequence number (default: unix time in ms)")
    make.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="where to write the update"
    )

    inspect = sub.add_parser(
        "inspect", help="show what an update says and whether it is valid (exit 1 if not)"
    )
    inspect.add_argument("file", type=Path, metavar="FILE")
    inspect.add_argument("--json", action="store_true", help="print JSON")

    publish = sub.add_parser(
        "publish", help="hand an update to the running node, which validates and announces it"
    )
    publish.add_argument("file", type=Path, metavar="FILE")
    _query_args(publish)

    listing = sub.add_parser("list", help="the updates a running node holds")
    _query_args(listing)

    apply = sub.add_parser("apply", help="write BASE + update to a new model file")
    apply.add_argument("--base", type=Path, required=True, metavar="BASE.safetensors")
    apply.add_argument("file", type=Path, metavar="FILE")
    apply.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.safetensors")


def _density(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1]: {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _node_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 32:
        raise argparse.ArgumentTypeError(f"expected 1..32, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"potluck {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `potluck peers | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# ---- commands ---------------------------------------------------------------------------------------


def _quiet_libraries(log_level: str) -> None:
    """Before hivemind and grpc are imported by a command that starts a node."""
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING" if log_level != "DEBUG" else "DEBUG")
    # The DHT child is forked from this process; it never uses gRPC, so gRPC's fork handlers are not needed.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # errors reach the user as our own one-liners


def cmd_run(args: argparse.Namespace) -> int:
    _quiet_libraries(args.log_level)
    import asyncio

    from potluck.node import DEFAULT_LISTEN, NodeConfig, run_node

    config = NodeConfig(
        data_dir=args.data_dir,
        run=_check_run_name(args.run),
        listen=args.listen or list(DEFAULT_LISTEN),
        announce=args.announce,
        initial_peers=args.initial_peers,
        rpc_listen=args.rpc_listen,
        allow_remote_rpc=args.allow_remote_rpc,
        role=args.role,
        record_ttl_s=args.record_ttl,
        manifest=args.manifest,
        model=args.model,
        allow=args.allow,
        max_update_norm=args.max_update_norm,
        max_updates_per_author=args.max_updates_per_author or None,
    )
    asyncio.run(run_node(config))
    return 0


def _check_run_name(name: str) -> str:
    if not name or len(name) > 128 or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"bad --run {name!r}: use 1-128 letters, digits, '-', '_' or '.'")
    return name


def cmd_id(args: argparse.Namespace) -> int:
    from potluck.datadir import prepare_data_dir
    from potluck.identity import load_or_create

    identity = load_or_create(prepare_data_dir(args.data_dir))
    if args.json:
        print(json.dumps({"node_id": identity.node_id, "peer_id": identity.peer_id}))
    else:
        print(f"node id  {identity.node_id}\npeer id  {identity.peer_id}")
    return 0


def _ask(args: argparse.Namespace, call: Callable[[Any], Any]) -> dict[str, Any]:
    """Call the running node's control API; exit 1 with one line if it does not answer."""
    from potluck.rpc.client import ControlClient, NodeUnreachable, resolve_address
    from potluck.rpc.jsonify import message_to_dict

    address = resolve_address(args.rpc, args.data_dir.expanduser())
    try:
        with ControlClient(address, timeout=args.timeout) as client:
            return message_to_dict(call(client))
    except NodeUnreachable as e:
        print(f"potluck {args.command}: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_status(args: argparse.Namespace) -> int:
    status = _ask(args, lambda c: c.status())
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    peers = _ask(args, lambda c: c.peers())["peers"]
    print(json.dumps(peers, indent=2) if args.json else format_peers(peers))
    return 0


def cmd_join(args: argparse.Namespace) -> int:
    _quiet_libraries(args.log_level)
    import asyncio

    from potluck.contribute import Contributor
    from potluck.manifest import is_run_id
    from potluck.node import NodeConfig, run_node

    if (args.run is None) == (args.manifest is None):
        raise ConfigError("give the run to join: --run RUN_ID (fetched from peers) or --manifest RUN.toml")
    if args.run is not None and not is_run_id(args.run):
        raise ConfigError(
            f"--run takes a run id (64 hex digits, printed by `potluck init`), got {args.run!r}"
        )
    if args.dirichlet is not None and args.shard is None:
        raise ConfigError("--dirichlet needs --shard I/N (which of the N contributors you are)")
    shard = args.shard if args.dirichlet is None else f"dirichlet:{args.dirichlet}:{args.shard}"
    if shard is not None:
        _check_shard(shard)
    config = NodeConfig(
        data_dir=args.data_dir, run=args.run or "default", manifest=args.manifest, listen=args.listen,
        initial_peers=args.initial_peers, rpc_listen=args.rpc_listen,
        role="client" if args.client_mode else "contributor",
        record_ttl_s=args.record_ttl,
    )  # fmt: skip

    def contributor(node):
        return Contributor(
            node, task_spec=args.task, shard=shard, local_steps=args.local_steps, seed=args.seed,
            max_rounds=args.rounds, join_timeout=args.join_timeout,
        )  # fmt: skip

    asyncio.run(run_node(config, contributor))
    return 0


def _check_shard(spec: str) -> None:
    """Catch a malformed --shard before starting anything (the task checks the rest)."""
    index = spec.rsplit(":", 1)[-1]
    i, sep, n = index.partition("/")
    if not sep or not i.isdigit() or not n.isdigit() or not 0 <= int(i) < int(n):
        raise ConfigError(f"bad --shard {index!r}: expected I/N with 0 <= I < N, e.g. 0/4")


def cmd_init(args: argparse.Namespace) -> int:
    from potluck.datadir import prepare_data_dir
    from potluck.identity import load_or_create
    from potluck.manifest import ManifestError, create_manifest, genesis_path
    from potluck.merge import StrategyError, get_strategy
    from potluck.store.versions import atomic_save
    from potluck.tasks import TaskError, get_task
    from potluck.tasks import genesis as task_genesis

    task_args = _key_values(args.task_arg, "--task-arg")
    strategy_args = _key_values(args.strategy_arg, "--strategy-arg")
    try:
        get_strategy(args.strategy, strategy_args)
    except StrategyError as e:
        raise ConfigError(f"--strategy {args.strategy}: {e}") from None
    if args.admission == "allowlist" and not args.allow:
        raise ConfigError("--admission allowlist needs --allow NODE_ID ...")
    identity = load_or_create(prepare_data_dir(args.data_dir))
    try:
        state, genesis_hash = task_genesis(get_task(args.task, task_args), args.seed)
        manifest = create_manifest(
            identity,
            args.task,
            genesis_hash,
            round_seconds=args.round_seconds,
            task_args=task_args,
            start_time=time.time() + args.start_in,
            seed=args.seed,
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
        )
    except (TaskError, ManifestError) as e:
        raise ConfigError(str(e)) from None
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(state, genesis_path(args.output))
        manifest.save(args.output)
    except OSError as e:
        raise ConfigError(f"cannot write {args.output}: {e.strerror}") from None
    print(
        f"run {manifest.run_id}\n"
        f"wrote {args.output} and {genesis_path(args.output)} (genesis {genesis_hash[:16]})"
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


def cmd_update(args: argparse.Namespace) -> int:
    return UPDATE_COMMANDS[args.update_command](args)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None


def cmd_update_make(args: argparse.Namespace) -> int:
    from potluck.atomic import atomic_write_bytes
    from potluck.datadir import prepare_data_dir
    from potluck.identity import load_or_create
    from potluck.updates.files import make_update

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
    from potluck.updates.files import inspect_update

    info = inspect_update(_read(args.file))
    print(json.dumps(info, indent=2) if args.json else format_update(info))
    if not info["valid"]:
        print(
            f"potluck update inspect: invalid update: {info['reason']}: {info.get('detail', '')}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_update_publish(args: argparse.Namespace) -> int:
    data = _read(args.file)
    reply = _ask(args, lambda c: c.publish(data))
    if args.json:
        print(json.dumps(reply, indent=2))
    elif reply["accepted"]:
        print(f"published {reply['update_id']}")
    if not reply["accepted"]:
        print(f"potluck update publish: rejected: {reply['reason']}: {reply['detail']}", file=sys.stderr)
        return 1
    return 0


def cmd_update_list(args: argparse.Namespace) -> int:
    updates = _ask(args, lambda c: c.updates())["updates"]
    print(json.dumps(updates, indent=2) if args.json else format_updates(updates))
    return 0


def cmd_update_apply(args: argparse.Namespace) -> int:
    from potluck.updates.files import apply_update_file
    from potluck.updates.reasons import UpdateRejected

    try:
        version = apply_update_file(args.base, _read(args.file), args.output)
    except UpdateRejected as e:
        print(f"potluck update apply: {e.reason.value}: {e.detail}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from None
    print(f"wrote {args.output}: version {version}")
    return 0


UPDATE_COMMANDS = {
    "make": cmd_update_make,
    "inspect": cmd_update_inspect,
    "publish": cmd_update_publish,
    "list": cmd_update_list,
    "apply": cmd_update_apply,
}


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


COMMANDS = {
    "run": cmd_run,
    "status": cmd_status,
    "peers": cmd_peers,
    "id": cmd_id,
    "update": cmd_update,
    "init": cmd_init,
    "join": cmd_join,
    "log": cmd_log,
    "export": cmd_export,
    "demo": cmd_demo,
}


# ---- tables for people ------------------------------------------------------------------------------


def format_status(s: dict[str, Any]) -> str:
    boot = s["bootstrap"]
    boot_text = boot["state"]
    if boot["state"] != "none":
        boot_text += f" ({boot['attempts']} attempt{'s' if boot['attempts'] != 1 else ''})"
    if boot["state"] == "retrying":
        boot_text += f", next in {boot['next_retry_in_s']:.0f}s: {boot['last_error']}"
    rejected = " ".join(f"{k}={v}" for k, v in sorted(s["rejected_records"].items()) if v) or "none"
    rows = [
        ("node id", s["node_id"]),
        ("peer id", s["peer_id"]),
        ("run", s["run"]),
        ("role", s["role"]),
        ("agent", s["agent_version"]),
        ("uptime", _duration(s["uptime_s"])),
        ("peers", str(s["peers"])),
        ("bootstrap", boot_text),
        ("run id", s["run_id"] or "-"),
        (
            "round",
            f"{s['round']} ({s['phase']})"
            + (f", ends in {max(0.0, s['deadline'] - time.time()):.0f}s" if s["deadline"] else ""),
        ),
        (
            "version",
            (s["version"] or s["model_version"] or "-")
            + (f" (round {s['committed_round']})" if s["committed_round"] >= 0 else ""),
        ),
        ("signed by", f"{len(s['participants'])} participants" if s["participants"] else "-"),
        (
            "updates",
            f"{s['held_updates']} held, {s['accepted_updates']} accepted, {s['fetched_updates']} fetched",
        ),
        (
            "rejected upd",
            " ".join(f"{k}={v}" for k, v in sorted(s["rejected_updates"].items()) if v) or "none",
        ),
        ("rejected rec", rejected),
        *_defence_rows(s.get("defence")),
        ("dht restarts", str(s["dht_restarts"])),
        ("control api", s["rpc_address"]),
    ]
    rows += [("address" if i == 0 else "", a) for i, a in enumerate(s["addrs"] or ["-"])]
    return "\n".join(f"{k:<13} {v}" for k, v in rows)


def _defence_rows(d: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not d:
        return []
    rows = [
        (
            "banned" if i == 0 else "",
            f"{b['node_id'][:16]} {b['reason']} in round {b['round']} (evidence {b['evidence_id'][:12]})",
        )
        for i, b in enumerate(d["bans"])
    ] or [("banned", "none")]
    if d["probation_rounds"]:
        on = " ".join(f"{p['node_id'][:16]}({p['rounds_left']} left)" for p in d["probation"]) or "nobody"
        rows.append(("probation", f"{d['probation_rounds']} rounds; {on}"))
    rejected = " ".join(f"{k}={v}" for k, v in sorted(d["evidence_rejected"].items()) if v)
    rows.append((
        "evidence",
        f"{d['evidence_verified']} verified ({d['equivocations_found']} found here), "
        f"{d['evidence_published']} published, {d['evidence_pending']} pending"
        + (f", rejected {rejected}" if rejected else ""),
    ))  # fmt: skip
    return rows


def _peer_defence(p: dict[str, Any]) -> str:
    if p.get("banned"):
        return f"banned ({p['ban_reason']})"
    if p.get("probation_rounds_left"):
        return f"probation ({p['probation_rounds_left']} left)"
    return "-"


def format_peers(peers: list[dict[str, Any]]) -> str:
    if not peers:
        return "no peers"
    now = time.time()
    header = ("NODE ID", "PEER ID", "ROLE", "SEEN", "MODEL", "DEFENCE", "ADDRESS")
    rows = [
        (
            p["node_id"][:16],
            p["peer_id"],
            p["role"],
            f"{max(0.0, now - p['last_seen']):.0f}s ago",
            p["model_version"][:12] or "-",
            _peer_defence(p),
            p["addrs"][0] if p["addrs"] else "-",
        )
        for p in peers
    ]
    return _table(header, rows)


def format_update(info: dict[str, Any]) -> str:
    if "id" not in info:
        return f"not an update ({info['bytes']} bytes): {info['reason']}: {info.get('detail', '')}"
    rows = [
        ("id", info["id"]),
        ("valid", "yes" if info["valid"] else f"no: {info['reason']}"),
        ("signature", "ok" if info["signature_ok"] else "BAD"),
        ("author", info["author"]),
        ("run", info["run"]),
        ("round", str(info["round"])),
        ("base", info["base"]),
        ("seq", str(info["seq"])),
        ("samples", str(info["sample_count"])),
        ("nonzeros", f"{info['nonzeros']} in {len(info['tensors'])} tensors"),
        ("bytes", f"{info['bytes']} ({info['compression_ratio']:.0f}x smaller than dense fp32)"),
    ]
    lines = [f"{k:<10} {v}" for k, v in rows]
    lines += [
        f"  {t['name']}: {t['nonzeros']} of {t['shape']}, {t['indices']} + {t['values']}"
        for t in info["tensors"]
    ]
    return "\n".join(lines)


def format_log(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "no committed versions yet"
    header = ("ROUND", "VERSION", "PARENT", "UPDATES", "CONTRIBUTORS", "ACCURACY", "TIME")
    rows = [
        (
            str(e["round"]),
            e["version"][:16],
            e["parent"][:16],
            str(e["updates"]),
            str(len(e["contributors"])),
            "-" if e.get("accuracy") is None else f"{e['accuracy']:.3f}",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"])),
        )
        for e in entries
    ]
    return _table(header, rows)


def format_updates(updates: list[dict[str, Any]]) -> str:
    if not updates:
        return "no updates held"
    header = ("UPDATE ID", "AUTHOR", "ROUND", "SEQ", "BYTES", "SOURCE")
    rows = [
        (u["update_id"][:16], u["author"][:16], str(u["round"]), str(u["seq"]), str(u["size"]), u["source"])
        for u in updates
    ]
    return _table(header, rows)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h{minutes:02d}m{secs:02d}s"
        if hours
        else f"{minutes}m{secs:02d}s"
        if minutes
        else f"{seconds:.1f}s"
    )


if __name__ == "__main__":
    raise SystemExit(main())
