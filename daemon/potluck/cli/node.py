"""`potluck run`, `join`, `status`, `peers` and `id`: start a node, and ask a running one."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from potluck.cli.common import (
    Commands,
    data_dir_arg,
    density,
    non_negative_int,
    positive_float,
    positive_int,
    query_args,
    run_metric,
    show,
)
from potluck.cli.format import format_peers, format_status
from potluck.cli.modules import join_args, module_spec
from potluck.cli.watch import observe_args, watch_args, watch_status
from potluck.errors import ConfigError
from potluck.rpc.address import DEFAULT_RPC_LISTEN


def add_parsers(commands: Commands) -> None:
    _run_parser(commands)
    for name, text, handler in (
        ("status", "show a running node's status", cmd_status),
        ("peers", "list the peers a running node sees", cmd_peers),
    ):
        parser = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        query_args(parser)
        parser.set_defaults(handler=handler)
        if name == "status":
            watch_args(parser)

    ident = commands.add_parser(
        "id",
        help="print this node's node id and peer id (creates the key if needed)",
        description="Print the node id (authors updates) and libp2p peer id of the key in <data-dir>.",
    )
    data_dir_arg(ident)
    ident.add_argument("--json", action="store_true", help="print JSON")
    ident.set_defaults(handler=cmd_id)
    _join_parser(commands)


def _run_parser(commands: Commands) -> None:
    run = commands.add_parser(
        "run", help="run a node until SIGINT/SIGTERM", description="Run a potluck node."
    )
    run.set_defaults(handler=cmd_run)
    data_dir_arg(run)
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
    observe_args(run)
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
        type=positive_float,
        metavar="L2",
        help="reject updates whose delta is larger than this",
    )
    run.add_argument(
        "--record-ttl",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="lifetime of this node's peer record; refreshed every third of it (default 30)",
    )
    run.add_argument(
        "--max-updates-per-author",
        type=non_negative_int,
        default=3,
        metavar="N",
        help="check at most N distinct updates per author and round; more are rate_limited "
        "(default 3, 0: no limit; an honest author sends one)",
    )
    run.add_argument(
        "--snapshot-every",
        type=positive_int,
        default=1,
        metavar="N",
        help="keep one whole version every N; the others as patches of their parent (default 1: all whole)",
    )


def _join_parser(commands: Commands) -> None:
    join = commands.add_parser(
        "join",
        help="contribute: train on your data every round and publish signed sparse updates (or a module)",
        description="Join a run as a contributor: a node that also trains (patches every round, or a "
        "named module with --module).",
    )
    join.set_defaults(handler=cmd_join)
    data_dir_arg(join)
    join.add_argument(
        "initial_peers", nargs="*", metavar="MULTIADDR", help="peers of the run, ending in /p2p/<id>"
    )
    join.add_argument("--run", metavar="RUN_ID", help="the run to join (its manifest is fetched from peers)")
    join.add_argument("--manifest", type=Path, metavar="RUN.toml", help="or the run's manifest file")
    join.add_argument("--task", help="the task you expect (refused if the run trains another)")
    join.add_argument(
        "--shard",
        metavar="I/N",
        help="train on the I-th of N non-IID shards (by label; lm: by domain, or DOMAIN, DOMAIN:I/N); "
        "default: all",
    )
    join.add_argument(
        "--dirichlet", type=positive_float, metavar="ALPHA", help="with --shard: Dirichlet label mix"
    )
    join.add_argument(
        "--local-steps", type=positive_int, default=50, help="training steps per round (default 50)"
    )
    join.add_argument("--seed", type=non_negative_int, default=0, help="seed of local training")
    join.add_argument("--rounds", type=positive_int, help="leave after contributing this many rounds")
    join.add_argument(
        "--lowrank",
        type=positive_int,
        metavar="RANK",
        help="train rank-RANK LoRA adapters (the model frozen) and publish their factors, not sparse deltas",
    )
    join.add_argument(
        "--lowrank-targets",
        default="*",
        metavar="GLOB",
        help="with --lowrank: the 2-D tensors to adapt, by name (default '*': all of them)",
    )
    join.add_argument(
        "--lowrank-extras",
        default="",
        metavar="GLOB",
        help="with --lowrank: also train the other tensors matching GLOB whole (e.g. '*': the biases and "
        "LayerNorms) and send every entry of theirs in the same update (the run's value format)",
    )
    join.add_argument(
        "--fresh-optimizer",
        action="store_true",
        help="restart the optimizer every round (default: keep its state across rounds where the task can)",
    )
    join.add_argument(
        "--salience",
        type=positive_float,
        default=0.0,
        metavar="S",
        help="sparse patches: send first the entries largest in |delta| x (Adam's gradient scale)^S "
        "(default: largest |delta|; 0.5 measured best in a run with sign values, bench/README.md#lm)",
    )
    join.add_argument(
        "--residual-decay", type=density, default=1.0, metavar="B",
        help="sparse patches: multiply the unsent residual by B (<= 1) each round (default 1: keep it all; "
        "0.9 with --salience 0.5 in a run with sign values and --topk-scope model: bench/README.md#lm)",
    )  # fmt: skip
    join.add_argument(
        "--client-mode",
        action="store_true",
        help="behind NAT/firewall: nobody dials us; updates are pushed to keepers, versions pulled",
    )
    join.add_argument(
        "--listen",
        nargs="+",
        metavar="MULTIADDR",
        default=["/ip4/0.0.0.0/tcp/0"],
        help="libp2p listen addresses (default /ip4/0.0.0.0/tcp/0: any free port)",
    )
    join.add_argument(
        "--rpc-listen", default="127.0.0.1:0", metavar="HOST:PORT", help="control API (default: any port)"
    )
    join.add_argument(
        "--record-ttl",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="lifetime of this node's peer record; refreshed every third of it (default 30)",
    )
    join.add_argument(
        "--join-timeout",
        type=positive_float,
        default=60.0,
        metavar="SECONDS",
        help="give up (exit 2) if the run cannot be reached in this time (default 60)",
    )
    observe_args(join)
    join_args(join)


def _quiet_libraries(args: argparse.Namespace) -> None:
    """Before hivemind and grpc are imported by a command that starts a node."""
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING" if args.log_level != "DEBUG" else "DEBUG")
    # Averagers are forked from this process; they never use gRPC, so gRPC's fork handlers are not needed.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # errors reach the user as our own one-liners
    if args.log_format == "json":
        from potluck.observe.logs import adopt_hivemind

        adopt_hivemind()


def cmd_run(args: argparse.Namespace) -> int:
    _quiet_libraries(args)
    import asyncio

    from potluck.lifecycle import run_node
    from potluck.node import DEFAULT_LISTEN, NodeConfig

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
        snapshot_every=args.snapshot_every,
        metrics_listen=args.metrics_listen,
        dashboard_listen=args.dashboard_listen,
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


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return watch_status(args)
    # the score's name comes from the run's task (BPB for lm), which the node's data dir knows
    return show(
        args, lambda c: c.status(), None, lambda s: format_status(s, run_metric(args.data_dir, s["run_id"]))
    )


def cmd_peers(args: argparse.Namespace) -> int:
    return show(args, lambda c: c.peers(), "peers", format_peers)


def cmd_join(args: argparse.Namespace) -> int:
    _quiet_libraries(args)
    import asyncio

    # a contributor trains, and the built-in tasks train with torch: import it now (a keeper does not,
    # see potluck.lean), so that no training step pays for the import (loaded later, from a worker
    # thread, it made Ctrl-C take seconds longer: bench/README.md#idle)
    import torch  # noqa: F401

    from potluck.contribute import Contributor
    from potluck.lifecycle import run_node
    from potluck.manifest import is_run_id
    from potluck.node import NodeConfig

    if (args.run is None) == (args.manifest is None):
        raise ConfigError("give the run to join: --run RUN_ID (fetched from peers) or --manifest RUN.toml")
    if args.run is not None and not is_run_id(args.run):
        raise ConfigError(
            f"--run takes a run id (64 hex digits, printed by `potluck init`), got {args.run!r}"
        )
    if args.lowrank_targets != "*" and args.lowrank is None:
        raise ConfigError("--lowrank-targets needs --lowrank RANK")
    if args.lowrank_extras and args.lowrank is None:
        raise ConfigError("--lowrank-extras needs --lowrank RANK")
    if args.dirichlet is not None and args.shard is None:
        raise ConfigError("--dirichlet needs --shard I/N (which of the N contributors you are)")
    shard = args.shard if args.dirichlet is None else f"dirichlet:{args.dirichlet}:{args.shard}"
    if shard is not None:
        _check_shard(shard)
    spec = module_spec(args)
    _check_peer_addresses(args.initial_peers)
    config = NodeConfig(
        data_dir=args.data_dir, run=args.run or "default", manifest=args.manifest, listen=args.listen,
        initial_peers=args.initial_peers, rpc_listen=args.rpc_listen,
        role="client" if args.client_mode else "contributor",
        record_ttl_s=args.record_ttl, metrics_listen=args.metrics_listen,
        dashboard_listen=args.dashboard_listen,
    )  # fmt: skip

    def contributor(node):
        patches = Contributor(
            node, task_spec=args.task, shard=shard, local_steps=args.local_steps, seed=args.seed,
            max_rounds=args.rounds, join_timeout=args.join_timeout, lowrank=args.lowrank,
            lowrank_targets=args.lowrank_targets, lowrank_extras=args.lowrank_extras,
            keep_optimizer=not args.fresh_optimizer, salience=args.salience,
            residual_decay=args.residual_decay,
        )  # fmt: skip
        if spec is None:
            return patches
        from potluck.contribute_module import ModuleContributor

        then = patches if args.patches else None
        return ModuleContributor(node, spec, then=then, join_timeout=args.join_timeout)

    asyncio.run(run_node(config, contributor))
    return 0


def _check_peer_addresses(addresses: list[str]) -> None:
    """join takes its peers as MULTIADDR arguments: name those, not run's --initial-peers."""
    from potluck.swarm.host import parse_initial_peer

    for text in addresses:
        try:
            parse_initial_peer(text)
        except ConfigError:
            raise ConfigError(
                f"bad peer address {text!r} (the MULTIADDR argument): "
                "expected e.g. /ip4/1.2.3.4/tcp/7451/p2p/12D3KooW..."
            ) from None


def _check_shard(spec: str) -> None:
    """Catch a malformed --shard before starting anything (the task checks the rest, e.g. the lm
    task's domain names: a bare word is left to it)."""
    index = spec.rsplit(":", 1)[-1]
    if index.isalpha():
        return
    i, sep, n = index.partition("/")
    if not sep or not i.isdigit() or not n.isdigit() or not 0 <= int(i) < int(n):
        raise ConfigError(f"bad --shard {index!r}: expected I/N with 0 <= I < N, e.g. 0/4")
