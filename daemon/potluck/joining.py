"""Working out the run a node takes part in: its manifest (from --manifest, a cached copy, or fetched
from the run's peers by run id), its genesis weights, the context updates are validated against, and
the task versions are evaluated on. The node (potluck.node) wires what this returns."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from potluck.atomic import atomic_write_bytes
from potluck.errors import ConfigError
from potluck.exchange.state import StateService, SyncFailed
from potluck.identity import PUBLIC_KEY_SIZE
from potluck.manifest import Manifest, ManifestError, genesis_path, is_run_id, load_manifest
from potluck.store.versions import VersionStore, load_state
from potluck.swarm.membership import LocalState, Membership
from potluck.tasks import TaskError, TrainableTask, get_task, is_trainable
from potluck.tasks import genesis as task_genesis
from potluck.updates.validation import ValidationContext

logger = logging.getLogger(__name__)

# a run id nobody passed: a node without a manifest (one that only relays and validates updates)
DEFAULT_RUN = "default"


def manifest_cache(data_dir: Path, run: str) -> Path:
    """Where a node keeps the manifest it fetched for run id ``run``, for its next start."""
    return data_dir / f"{run}.manifest"


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
        return manifest
    if is_run_id(run):
        cached = manifest_cache(data_dir, run)
        if cached.exists():
            try:
                return Manifest.from_bytes(cached.read_bytes(), run)
            except (OSError, ManifestError) as e:
                logger.warning(f"ignoring cached manifest {cached}: {e}")
    return None


def ensure_genesis(versions: VersionStore, manifest: Manifest, manifest_path: Path | None) -> None:
    """Genesis weights in the version store: from the file beside the manifest, or rebuilt by the task."""
    if versions.has(manifest.genesis):
        return
    beside = genesis_path(manifest_path) if manifest_path is not None else None
    if beside is not None and beside.exists():
        state = load_state(beside)
    else:
        try:
            state, _ = task_genesis(get_task(manifest.task, manifest.task_args), manifest.seed)
        except TaskError as e:
            raise ConfigError(f"cannot rebuild the genesis weights: {e}") from None
    if versions.put(state) != manifest.genesis:
        raise ConfigError(f"genesis weights do not hash to the manifest's genesis {manifest.genesis[:16]}")


async def fetch_manifest(
    run: str, membership: Membership, state_service: StateService, data_dir: Path, versions: VersionStore
) -> Manifest:
    """The manifest of run id ``run`` from its peers (checked against the run id), cached on disk with its
    genesis weights in the version store; retried with backoff until some peer serves it."""
    delay = 1.0
    while True:
        holders = [(p.record.peer_id, list(p.record.addrs)) for p in membership.peers()]
        try:
            data = await state_service.fetch_manifest(run, holders) if holders else None
            if data is not None:
                manifest = Manifest.from_bytes(data, run)
                atomic_write_bytes(manifest_cache(data_dir, run), data)
                ensure_genesis(versions, manifest, None)
                return manifest
        except (SyncFailed, ManifestError, ConfigError) as e:
            logger.warning(f"fetching the manifest of run {run[:16]}: {e}; retrying")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


def run_context(manifest: Manifest, versions: VersionStore) -> ValidationContext:
    """What an update must match to be part of a run with a manifest: its genesis shapes and rules."""
    genesis_state = versions.get(manifest.genesis)
    return ValidationContext(
        run=manifest.run_id,
        round=0,
        shapes={n: tuple(t.shape) for n, t in genesis_state.items()},
        known_bases=frozenset({manifest.genesis}),
        admitted=(
            frozenset(bytes.fromhex(a) for a in manifest.allow) if manifest.admission == "allowlist" else None
        ),
        max_norm=manifest.max_update_norm,
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


def evaluation_task(manifest: Manifest) -> TrainableTask | None:
    """Keepers evaluate every version on the task's held-out split, when the task can."""
    try:
        task = get_task(manifest.task, manifest.task_args)
    except TaskError as e:
        logger.warning(f"versions will not be evaluated: {e}")
        return None
    return task if is_trainable(task) else None
