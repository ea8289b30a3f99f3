"""Working out the run a node takes part in: its manifest (from --manifest, a cached copy, or fetched
from the run's peers by run id), its genesis weights, the context updates are validated against, and
the task versions are evaluated on. The node (potluck.node) wires what this returns."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from potluck.atomic import atomic_write_bytes
from potluck.errors import ConfigError
from potluck.exchange.state import StateService, SyncFailed
from potluck.identity import PUBLIC_KEY_SIZE
from potluck.manifest import Manifest, ManifestError, is_run_id
from potluck.merge.probe import ProbeError, ProbeRule
from potluck.rounds import schedule
from potluck.rpc.address import DEFAULT_RPC_LISTEN
from potluck.runfiles import genesis_path, load_manifest, manifest_cache, run_context
from potluck.store.history import History
from potluck.store.versions import CorruptVersion, VersionStore, load_state
from potluck.swarm.membership import LocalState, Membership
from potluck.tasks import TaskError, TrainableTask, get_task, is_trainable
from potluck.tasks import genesis as task_genesis
from potluck.tasks.probing import run_probe
from potluck.updates.validation import ValidationContext
from potluck.vcs import revert

logger = logging.getLogger(__name__)

# a run id nobody passed: a node without a manifest (one that only relays and validates updates)
DEFAULT_RUN = "default"
DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/7451",)
DEFAULT_RECORD_TTL_S = 30.0
# How many distinct updates per author and round a node checks past the signature. An honest author
# signs one update per round (a second one is equivocation), so any limit >= 1 never refuses it.
DEFAULT_MAX_UPDATES_PER_AUTHOR = 3


@dataclass
class NodeConfig:
    """What a node was asked to do (`potluck run`/`join` flags): where, as what, in which run."""

    data_dir: Path
    run: str = DEFAULT_RUN
    listen: list[str] = field(default_factory=lambda: list(DEFAULT_LISTEN))
    announce: list[str] = field(default_factory=list)
    initial_peers: list[str] = field(default_factory=list)
    rpc_listen: str = DEFAULT_RPC_LISTEN
    allow_remote_rpc: bool = False
    role: str = "keeper"  # "contributor" (trains too) or "client" (a contributor nobody can dial)
    record_ttl_s: float = DEFAULT_RECORD_TTL_S
    manifest: Path | None = None  # a run's signed rules (`potluck init`); or --run RUN_ID to fetch them
    model: Path | None = None  # without a manifest: the version updates are validated against
    allow: list[str] = field(default_factory=list)  # admitted authors (node ids); empty = open run
    max_update_norm: float | None = None
    # The per-author rate limit is a node setting, not a manifest rule: it protects this node's CPU,
    # bandwidth and disk from one key's flood, like a firewall rule, and it cannot change what the run
    # agrees on: the round merges the union of the participants' entries, and an honest author's one
    # update per round passes any limit >= 1. None: no limit.
    max_updates_per_author: int | None = DEFAULT_MAX_UPDATES_PER_AUTHOR
    snapshot_every: int = 1  # versions kept whole; between them, patches of the parent (store/versions.py)
    # the read-only HTTP pages (potluck.observe): HOST:PORT or "off"
    metrics_listen: str = "off"
    dashboard_listen: str = "off"


def bans_path(data_dir: Path, run: str) -> Path:
    """Where a node keeps the bans of a run (potluck.defence.bans)."""
    return data_dir / "bans" / f"{run}.json"


def local_manifest(path: Path | None, run: str, data_dir: Path, versions: VersionStore) -> Manifest | None:
    """The run's manifest from ``path`` (--manifest), or one fetched from peers on an earlier start."""
    if path is not None:
        try:
            manifest = load_manifest(path)
        except (OSError, ManifestError) as e:
            raise ConfigError(f"cannot load --manifest {path}: {e}") from None
        if run not in (DEFAULT_RUN, manifest.run_id):
            raise ConfigError(f"--run {run} is not the run id of --manifest ({manifest.run_id})")
        ensure_genesis(versions, manifest, path)
        cache = manifest_cache(data_dir, manifest.run_id)
        if not cache.exists():  # so that commands reading the data dir (`generate`, `log`) know the run
            atomic_write_bytes(cache, manifest.to_bytes())
        return manifest
    if is_run_id(run):
        cached = manifest_cache(data_dir, run)
        if cached.exists():
            try:
                return Manifest.from_bytes(cached.read_bytes(), run)
            except (OSError, ManifestError) as e:
                logger.warning(f"ignoring cached manifest {cached}: {e}")
    return None


class GenesisMissing(ConfigError):
    """The run's genesis is not here, and the task's seed does not rebuild it (a pre-trained base)."""


def ensure_genesis(versions: VersionStore, manifest: Manifest, manifest_path: Path | None) -> None:
    """Genesis weights in the version store: from the file beside the manifest, or rebuilt by the task.

    A run created with ``potluck init --genesis`` (a pre-trained base) cannot be rebuilt from its seed:
    started with --manifest, a node needs the genesis file beside it, which the error says; joined by
    run id, it fetches the genesis from its peers (:func:`fetch_manifest`)."""
    if versions.has(manifest.genesis):
        return
    beside = genesis_path(manifest_path) if manifest_path is not None else None
    if beside is not None and beside.exists():
        try:
            state = load_state(beside)
        except CorruptVersion as e:
            raise ConfigError(f"cannot read the genesis weights: {e}") from None
        if versions.put(state) != manifest.genesis:
            raise ConfigError(f"{beside} does not hash to the manifest's genesis {manifest.genesis[:16]}")
        return
    try:
        state, rebuilt = task_genesis(get_task(manifest.task, manifest.task_args), manifest.seed)
    except TaskError as e:
        raise ConfigError(f"cannot rebuild the genesis weights: {e}") from None
    if rebuilt != manifest.genesis:
        where = f"{beside} is missing" if beside is not None else "this node has no copy"
        raise GenesisMissing(
            f"the run's genesis {manifest.genesis[:16]} is not task {manifest.task!r}'s seeded init (a "
            f"pre-trained genesis?) and {where}: start with --manifest RUN.toml, RUN.genesis.safetensors "
            "beside it"
        )
    versions.put(state)


async def fetch_manifest(
    run: str, membership: Membership, state_service: StateService, data_dir: Path, versions: VersionStore
) -> Manifest:
    """The manifest of run id ``run`` from its peers (checked against the run id) with its genesis weights
    in the version store (rebuilt from the task's seed, or fetched from the peers and checked against
    the genesis hash: a pre-trained base), then cached on disk; retried with backoff until it works."""
    delay = 1.0
    while True:
        holders = [(p.record.peer_id, list(p.record.addrs)) for p in membership.peers()]
        try:
            data = await state_service.fetch_manifest(run, holders) if holders else None
            if data is not None:
                manifest = Manifest.from_bytes(data, run)
                pretrained = False
                try:
                    ensure_genesis(versions, manifest, None)
                except GenesisMissing:
                    pretrained = True
                if pretrained:
                    logger.info(f"fetching run {run[:16]}'s pre-trained genesis {manifest.genesis[:12]}")
                    state = await state_service.fetch_version(manifest.genesis, holders)
                    if versions.put(state) != manifest.genesis:  # download() checked every tensor
                        raise SyncFailed(f"the genesis fetched does not hash to {manifest.genesis[:16]}")
                atomic_write_bytes(manifest_cache(data_dir, run), data)  # last: a cached run has its genesis
                return manifest
        except (SyncFailed, ManifestError, ConfigError) as e:
            logger.warning(f"fetching the manifest of run {run[:16]}: {e}; retrying")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


def validation_context(
    config: NodeConfig, run: str, manifest: Manifest | None, versions: VersionStore, local: LocalState
) -> ValidationContext:
    """What updates are checked against: the run's manifest if there is one, else the node's flags."""
    if manifest is not None:  # a revert is checked against this node's history (vcs/revert.py)
        hook = revert.validation_hook(config.data_dir, manifest)
        clock = None if manifest.pacing == "ready" else lambda: schedule.round_at(manifest, time.time())
        return dataclasses.replace(run_context(manifest, versions), check_revert=hook, round_now=clock)
    return loose_context(
        run, local, versions, model=config.model, allow=config.allow, max_update_norm=config.max_update_norm
    )


def loose_context(
    run: str,
    local: LocalState,
    versions: VersionStore,
    *,
    model: Path | None,
    allow: list[str],
    max_update_norm: float | None,
) -> ValidationContext:
    """What an update must match on a node without a manifest: --model's shapes (that model becomes the
    node's version), --allow's authors and --max-update-norm."""
    shapes: dict[str, tuple[int, ...]] = {}
    if model is not None:
        try:
            state = load_state(model)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load --model {model}: {e}") from None
        local.model_version = versions.put(state)
        shapes = {name: tuple(t.shape) for name, t in state.items()}
    try:
        admitted = frozenset(bytes.fromhex(a) for a in allow) or None
    except ValueError:
        raise ConfigError("--allow takes node ids (64 hex digits, see `potluck id`)") from None
    if admitted and any(len(a) != PUBLIC_KEY_SIZE for a in admitted):
        raise ConfigError("--allow takes node ids (64 hex digits, see `potluck id`)")
    return ValidationContext(
        run=run,
        round=local.round,
        shapes=shapes,
        known_bases=frozenset({local.model_version} - {""}),
        admitted=admitted,
        max_norm=max_update_norm,
    )


def in_history(manifest: Manifest | None, history: History | None, version: str) -> bool:
    """Whether ``version`` is the run's genesis or a version a recorded commit produced."""
    if manifest is None:
        return False
    return version == manifest.genesis or (history is not None and history.has_version(version))


def probe_rule(manifest: Manifest) -> ProbeRule | None:
    """The run's probe rule (None: it names no probe set); ConfigError in one line when this node's task
    hands no probe set or one whose bytes do not hash to the manifest's: the node refuses to run."""
    try:
        return run_probe(manifest)
    except ProbeError as e:
        raise ConfigError(f"{e}; refusing to run") from None


def evaluation_task(manifest: Manifest) -> TrainableTask | None:
    """Keepers evaluate every version on the task's held-out split, when the task can."""
    try:
        task = get_task(manifest.task, manifest.task_args)
    except TaskError as e:
        logger.warning(f"versions will not be evaluated: {e}")
        return None
    return task if is_trainable(task) else None
