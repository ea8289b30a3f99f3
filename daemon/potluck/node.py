"""The node daemon: identity + swarm host + membership + control API, run until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from potluck import AGENT
from potluck.atomic import atomic_write_bytes
from potluck.datadir import DataDirLock, prepare_data_dir
from potluck.defence.bans import BanRegistry, BanStoreError
from potluck.defence.service import DefenceService
from potluck.errors import ConfigError
from potluck.exchange.service import UpdateExchange
from potluck.exchange.slices import SliceService
from potluck.exchange.state import StateService, SyncFailed
from potluck.identity import P2P_KEY_FILE, PUBLIC_KEY_SIZE, NodeIdentity, load_or_create, node_id_of
from potluck.manifest import Manifest, ManifestError, genesis_path, is_run_id, load_manifest
from potluck.merge import StrategyError
from potluck.rounds.engine import RoundEngine
from potluck.rpc.address import DEFAULT_RPC_LISTEN, write_api_file
from potluck.rpc.server import ControlServer, ControlServicer
from potluck.store.history import History
from potluck.store.updates import UpdateStore
from potluck.store.versions import VersionStore, load_state
from potluck.swarm.guard import install_ext_depth_guard
from potluck.swarm.host import SwarmHost
from potluck.swarm.membership import LocalState, Membership
from potluck.swarm.records import RecordReason
from potluck.swarm.validator import PeerRecordValidator, RejectionCounters
from potluck.tasks import TaskError, TrainableTask, get_task, is_trainable
from potluck.tasks import genesis as task_genesis
from potluck.updates.codec import DecodeLimits
from potluck.updates.reasons import UpdateRejected
from potluck.updates.validation import UpdateValidator, ValidationContext
from potluck.v1 import control_pb2

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/7451",)
DEFAULT_RECORD_TTL_S = 30.0
HISTORY_FILE = "history.sqlite"
# How many distinct updates per author and round a node checks past the signature. An honest author
# signs one update per round (a second one is equivocation), so any limit >= 1 never refuses it.
DEFAULT_MAX_UPDATES_PER_AUTHOR = 3


def bans_path(data_dir: Path, run: str) -> Path:
    """Where a node keeps the bans of a run (potluck.defence.bans)."""
    return data_dir / "bans" / f"{run}.json"


@dataclass
class NodeConfig:
    data_dir: Path
    run: str = "default"
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


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.data_dir = prepare_data_dir(config.data_dir)
        self._lock = DataDirLock(self.data_dir)
        self.identity: NodeIdentity | None = None
        self.host: SwarmHost | None = None
        self.membership: Membership | None = None
        self.exchange: UpdateExchange | None = None
        self.state_service: StateService | None = None
        self.engine: RoundEngine | None = None
        self.history: History | None = None
        self.bans: BanRegistry | None = None
        self.defence: DefenceService | None = None
        self.manifest: Manifest | None = None
        self.run = config.run
        self.restore_signals: Callable[[], None] = lambda: None
        self._background: list[asyncio.Task] = []
        self.rpc: ControlServer | None = None
        self.rejections = RejectionCounters()
        self.local = LocalState(role=config.role, agent=AGENT)
        self.started_at = time.time()
        self._api_file: Path | None = None

    async def start(self) -> None:
        self._lock.acquire()
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.config
        self.identity = load_or_create(self.data_dir)
        self.versions = VersionStore(self.data_dir / "versions")
        self.manifest = self._local_manifest()
        self.run = self.manifest.run_id if self.manifest is not None else cfg.run
        # the control server binds first: a busy port fails fast, before p2pd and the DHT start
        self.rpc = ControlServer(
            ControlServicer(self),
            cfg.rpc_listen,
            allow_remote=cfg.allow_remote_rpc,
            max_message_bytes=DecodeLimits().max_bytes + (1 << 20),
        )
        rpc_address = await self.rpc.start()
        install_ext_depth_guard(lambda: self.rejections.add(RecordReason.TOO_DEEP))  # before the DHT forks
        validator = PeerRecordValidator(self.identity, self.run, self.rejections)
        self.host = SwarmHost(
            identity_path=self.data_dir / P2P_KEY_FILE,
            listen=cfg.listen,
            announce=cfg.announce,
            initial_peers=cfg.initial_peers,
            validators=[validator],
            on_dht_restart=self._after_dht_restart,
            client_mode=cfg.role == "client",
        )
        await self.host.start()
        if self.host.peer_id != self.identity.peer_id:  # p2pd must run with the node key
            raise RuntimeError(f"p2pd peer id {self.host.peer_id} != node key's {self.identity.peer_id}")
        self.state_service = StateService(self.host, self.versions, self._manifest_bytes)
        await self.state_service.start()
        self.membership = Membership(self.host, self.identity, self.run, self.local, ttl_s=cfg.record_ttl_s)
        self.membership.start()
        if self.manifest is None and is_run_id(self.run):
            # joined by run id alone: the rules come from peers; the rest starts once they have
            self._background.append(asyncio.create_task(self._join_run(), name="join-run"))
        else:
            await self._start_updates_and_rounds()
        self._api_file = write_api_file(self.data_dir, rpc_address)
        logger.info(
            f"node {self.identity.node_id[:16]} (peer {self.identity.peer_id}) in run {self.run!r}; "
            f"control API on {rpc_address}; addresses: {' '.join(await self.host.visible_addrs())}"
        )

    async def _start_updates_and_rounds(self) -> None:
        assert self.host is not None and self.identity is not None and self.membership is not None
        try:
            self.bans = BanRegistry(bans_path(self.data_dir, self.run))
        except BanStoreError as e:
            raise ConfigError(f"{e}; refusing to start without the run's bans") from None
        validator = UpdateValidator(
            self._validation_context(),
            is_banned=self.bans.is_banned,
            max_per_author_round=self.config.max_updates_per_author,
        )
        self.exchange = UpdateExchange(
            self.host,
            self.identity,
            self.run,
            UpdateStore(self.data_dir / "updates"),
            validator,
            self._addresses_of,
            evidence_store=UpdateStore(self.data_dir / "evidence"),
        )
        self.defence = DefenceService(
            host=self.host,
            identity=self.identity,
            run=self.run,
            bans=self.bans,
            exchange=self.exchange,
            peers=self.membership.peers,
            manifest=self.manifest,
        )
        await self.exchange.start()
        self.defence.start()
        if self.manifest is not None:
            slice_service = SliceService(self.host, self.manifest.run_id)
            await slice_service.start()
            self.history = History(self.data_dir / HISTORY_FILE, self.versions)
            self.defence.history = self.history
            try:
                self.engine = RoundEngine(
                    host=self.host,
                    identity=self.identity,
                    manifest=self.manifest,
                    versions=self.versions,
                    history=self.history,
                    exchange=self.exchange,
                    local=self.local,
                    state_service=self.state_service,
                    peers=self.membership.peers,
                    on_new_version=self.membership.republish_now,
                    restore_signals=self.restore_signals,
                    task=self._evaluation_task(),
                    aggregates=self.config.role != "client",
                    slice_service=slice_service,
                    defence=self.defence,
                )
            except StrategyError as e:
                raise ConfigError(f"the run's merge strategy {self.manifest.strategy!r}: {e}") from None
            self.engine.start()

    def _evaluation_task(self) -> TrainableTask | None:
        """Keepers evaluate every version on the task's held-out split, when the task can."""
        assert self.manifest is not None
        try:
            task = get_task(self.manifest.task, self.manifest.task_args)
        except TaskError as e:
            logger.warning(f"versions will not be evaluated: {e}")
            return None
        return task if is_trainable(task) else None

    async def _join_run(self) -> None:
        """Fetch the manifest of ``self.run`` from its peers (checked against the run id), then start."""
        assert self.membership is not None and self.state_service is not None
        delay = 1.0
        while self.manifest is None:
            holders = [(p.record.peer_id, list(p.record.addrs)) for p in self.membership.peers()]
            try:
                data = await self.state_service.fetch_manifest(self.run, holders) if holders else None
                if data is not None:
                    manifest = Manifest.from_bytes(data, self.run)
                    atomic_write_bytes(self._manifest_cache(), data)
                    self._ensure_genesis(manifest, None)
                    self.manifest = manifest
            except (SyncFailed, ManifestError, ConfigError) as e:
                logger.warning(f"fetching the manifest of run {self.run[:16]}: {e}; retrying")
            if self.manifest is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        logger.info(f"joined run {self.run[:16]} ({self.manifest.task}, quorum {self.manifest.quorum})")
        await self._start_updates_and_rounds()

    def _manifest_cache(self) -> Path:
        return self.data_dir / f"{self.run}.manifest"

    def _local_manifest(self) -> Manifest | None:
        """The run's manifest from --manifest, or one fetched from peers on an earlier start."""
        cfg = self.config
        if cfg.manifest is not None:
            try:
                manifest = load_manifest(cfg.manifest)
            except (OSError, ManifestError) as e:
                raise ConfigError(f"cannot load --manifest {cfg.manifest}: {e}") from None
            if cfg.run not in ("default", manifest.run_id):
                raise ConfigError(f"--run {cfg.run} is not the run id of --manifest ({manifest.run_id})")
            self._ensure_genesis(manifest, cfg.manifest)
            return manifest
        if is_run_id(cfg.run):
            cached = self.data_dir / f"{cfg.run}.manifest"
            if cached.exists():
                try:
                    return Manifest.from_bytes(cached.read_bytes(), cfg.run)
                except (OSError, ManifestError) as e:
                    logger.warning(f"ignoring cached manifest {cached}: {e}")
        return None

    def _ensure_genesis(self, manifest: Manifest, manifest_path: Path | None) -> None:
        """Genesis weights in the version store: from the file beside the manifest, or rebuilt by the task."""
        if self.versions.has(manifest.genesis):
            return
        beside = genesis_path(manifest_path) if manifest_path is not None else None
        if beside is not None and beside.exists():
            state = load_state(beside)
        else:
            try:
                state, _ = task_genesis(get_task(manifest.task, manifest.task_args), manifest.seed)
            except TaskError as e:
                raise ConfigError(f"cannot rebuild the genesis weights: {e}") from None
        if self.versions.put(state) != manifest.genesis:
            raise ConfigError(
                f"genesis weights do not hash to the manifest's genesis {manifest.genesis[:16]}"
            )

    def _manifest_bytes(self, run_id: str) -> bytes | None:
        return (
            self.manifest.to_bytes() if self.manifest is not None and self.manifest.run_id == run_id else None
        )

    def _validation_context(self) -> ValidationContext:
        cfg = self.config
        shapes: dict[str, tuple[int, ...]] = {}
        if self.manifest is not None:
            m = self.manifest
            genesis_state = self.versions.get(m.genesis)
            return ValidationContext(
                run=m.run_id,
                round=0,
                shapes={n: tuple(t.shape) for n, t in genesis_state.items()},
                known_bases=frozenset({m.genesis}),
                admitted=frozenset(bytes.fromhex(a) for a in m.allow) if m.admission == "allowlist" else None,
                max_norm=m.max_update_norm,
            )
        if cfg.model is not None:
            try:
                state = load_state(cfg.model)
            except (OSError, ValueError) as e:
                raise ConfigError(f"cannot load --model {cfg.model}: {e}") from None
            self.local.model_version = self.versions.put(state)
            shapes = {name: tuple(t.shape) for name, t in state.items()}
        try:
            admitted = frozenset(bytes.fromhex(a) for a in cfg.allow) or None
        except ValueError:
            raise ConfigError("--allow takes node ids (64 hex digits, see `potluck id`)") from None
        if admitted and any(len(a) != PUBLIC_KEY_SIZE for a in admitted):
            raise ConfigError("--allow takes node ids (64 hex digits, see `potluck id`)")
        return ValidationContext(
            run=self.run,
            round=self.local.round,
            shapes=shapes,
            known_bases=frozenset({self.local.model_version} - {""}),
            admitted=admitted,
            max_norm=cfg.max_update_norm,
        )

    def _addresses_of(self, peer_id: str) -> list[str]:
        assert self.membership is not None
        return next(
            (list(p.record.addrs) for p in self.membership.peers() if p.record.peer_id == peer_id), []
        )

    async def publish(self, data: bytes) -> control_pb2.PublishUpdateResponse:
        if self.exchange is None:
            return control_pb2.PublishUpdateResponse(
                accepted=False, reason="not_ready", detail="this node has not fetched its run's manifest yet"
            )
        try:
            held = await self.exchange.accept(data, "published")
        except UpdateRejected as e:
            return control_pb2.PublishUpdateResponse(accepted=False, reason=e.reason.value, detail=e.detail)
        return control_pb2.PublishUpdateResponse(accepted=True, update_id=held.update_id)

    def list_updates(self) -> control_pb2.ListUpdatesResponse:
        if self.exchange is None:
            return control_pb2.ListUpdatesResponse()
        held = sorted(self.exchange.held.values(), key=lambda u: (-u.round, u.update_id))
        return control_pb2.ListUpdatesResponse(
            updates=[
                control_pb2.UpdateInfo(
                    update_id=u.update_id,
                    author=node_id_of(u.author),
                    round=u.round,
                    seq=u.seq,
                    size=u.size,
                    sample_count=u.sample_count,
                    base=u.base,
                    source=u.source,
                )
                for u in held
            ]
        )

    async def _after_dht_restart(self) -> None:
        if self.membership is not None:
            self.membership.republish_now()

    async def stop(self) -> None:
        """Stop everything this node started; safe to call at any point of start()."""
        if self._api_file is not None:
            self._api_file.unlink(missing_ok=True)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.engine is not None:
            await self.engine.stop()
        if self.rpc is not None:
            with contextlib.suppress(Exception):
                await self.rpc.stop()
        if self.defence is not None:
            await self.defence.stop()
        if self.exchange is not None:
            await self.exchange.stop()
        if self.membership is not None:
            await self.membership.stop()
        if self.host is not None:
            await self.host.stop()
        self._lock.release()

    # ---- control API views ------------------------------------------------------------------------

    def status(self) -> control_pb2.GetStatusResponse:
        assert self.identity is not None and self.host is not None and self.membership is not None
        boot = self.host.bootstrap
        fields = dict(
            node_id=self.identity.node_id,
            peer_id=self.identity.peer_id,
            run=self.run,
            agent_version=AGENT,
            listen_addrs=self.host.listen,
            addrs=self.host.addrs,
            uptime_s=time.time() - self.started_at,
            peers=len(self.membership.peers()),
            role=self.local.role,
            round=self.local.round,
            phase="idle",
            model_version=self.local.model_version,
            rejected_records=self.rejections.snapshot(),
            dht_restarts=self.host.dht_restarts,
            bootstrap=control_pb2.Bootstrap(
                state=boot.state,
                initial_peers=boot.initial_peers,
                attempts=boot.attempts,
                last_error=boot.last_error,
                next_retry_in_s=max(0.0, boot.next_retry_at - time.time())
                if boot.state == "retrying"
                else 0.0,
            ),
            rpc_address=self.rpc.address if self.rpc else "",
            record_ttl_s=self.membership.ttl_s,
        )
        fields |= self._update_status() | self._round_status()
        if self.defence is not None:
            fields["defence"] = self._defence_status()
        return control_pb2.GetStatusResponse(**fields)

    def _round_status(self) -> dict:
        if self.engine is None:
            return {
                "run_id": self.run if is_run_id(self.run) else "",
                "committed_round": -1,
                "accuracy": -1.0,
            }
        e = self.engine
        return {
            "run_id": e.run_id,
            "round": max(e.status.round, 0),
            "phase": e.status.phase,
            "version": e.version,
            "deadline": e.status.deadline,
            "participants": e.status.last_participants,
            "committed_round": e.committed_round,
            "abandoned_rounds": e.status.abandoned_rounds,
            "fork_switches": e.status.fork_switches,
            "accuracy": e.status.accuracy,
            "round_error": e.status.last_error,
            "bad_tensors": self.state_service.stats.bad_tensors if self.state_service else 0,
            "aggregation": e.aggregation_status(),
        }

    def _update_status(self) -> dict:
        if self.exchange is None:
            return {"base_version": self.local.model_version, "accuracy": -1.0}
        counters = self.exchange.validator.counters
        return {
            "accepted_updates": counters["accepted"],
            "held_updates": len(self.exchange.held),
            "rejected_updates": {reason: n for reason, n in counters.items() if reason != "accepted"},
            "bad_holder_fetches": self.exchange.bad_holder_fetches,
            "fetched_updates": self.exchange.fetched,
            "published_updates": sum(u.source == "published" for u in self.exchange.held.values()),
            "published_bytes": sum(u.size for u in self.exchange.held.values() if u.source == "published"),
            "base_version": self.local.model_version,
        }

    def _defence_status(self) -> control_pb2.Defence:
        assert self.defence is not None
        d = self.defence.status_fields()
        return control_pb2.Defence(
            bans=[control_pb2.Ban(**b) for b in d.pop("bans")],
            probation=[control_pb2.Probation(**p) for p in d.pop("probation")],
            **d,
        )

    def _peer_defence(self, node_id: str) -> dict:
        if self.defence is None:
            return {}
        ban = self.defence.ban_of(node_id)
        return {
            "banned": ban is not None,
            "ban_reason": ban.reason if ban is not None else "",
            "probation_rounds_left": self.defence.rounds_left(node_id) if ban is None else 0,
        }

    def list_peers(self) -> control_pb2.ListPeersResponse:
        assert self.membership is not None
        return control_pb2.ListPeersResponse(
            peers=[
                control_pb2.Peer(
                    node_id=p.node_id,
                    peer_id=p.record.peer_id,
                    addrs=p.record.addrs,
                    role=p.record.role,
                    agent_version=p.record.agent,
                    last_seen=p.record.timestamp,
                    expires_at=p.expires_at,
                    round=p.record.round,
                    model_version=p.record.model_version,
                    sequence=p.record.sequence,
                    **self._peer_defence(p.node_id),
                )
                for p in self.membership.peers()
            ]
        )


SHUTDOWN_BUDGET_S = 5.0


class Worker(Protocol):
    """Work that runs beside a node (a contributor's training loop) and ends the node when it ends."""

    async def run(self) -> None: ...
    def stop(self) -> None: ...


async def run_node(config: NodeConfig, make_worker: Callable[[Node], Worker] | None = None) -> None:
    """Run a node (and an optional worker) until SIGINT/SIGTERM or the worker's end, then shut down
    within SHUTDOWN_BUDGET_S. Startup and worker configuration errors propagate (ConfigError: exit 2)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    node = Node(config)

    def restore_signals() -> None:  # also after hivemind's averager set SIGINT to "ignore"
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

    restore_signals()
    node.restore_signals = restore_signals
    start = asyncio.create_task(node.start())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
    failure: BaseException | None = None
    if start.done():
        start.result()  # raise a startup error (ConfigError -> exit 2); start() cleaned up already
        worker = make_worker(node) if make_worker is not None else None
        work = asyncio.create_task(worker.run(), name="worker") if worker is not None else None
        await asyncio.wait({stopped, *([work] if work else [])}, return_when=asyncio.FIRST_COMPLETED)
        if worker is not None and work is not None:
            worker.stop()  # training leaves after its current step
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await asyncio.wait_for(work, SHUTDOWN_BUDGET_S / 2)
                except TimeoutError:
                    logger.warning("the worker did not stop in time")
                except Exception as e:  # e.g. ConfigError: report it after a clean shutdown
                    failure = e
    else:  # signalled while starting
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await start
    logger.info("shutting down")
    if stop.is_set():  # a second signal ends us at once; a first one (we were leaving anyway) changes nothing
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, os._exit, 130)
    try:
        await asyncio.wait_for(node.stop(), SHUTDOWN_BUDGET_S - 0.5)
    except TimeoutError:
        logger.error("clean shutdown took too long; killing our child processes")
        if node.host is not None:
            for pid in node.host.child_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    logger.info("stopped")
    if failure is not None:
        raise failure
