"""The node daemon's wiring and lifecycle: identity, swarm host, membership, update exchange, defence,
round engine and control API, started in order and stopped in reverse (lifecycle.py runs one until
told to stop). What run it takes part in is joining.py's to work out; the control API's replies are
rpc/replies.py's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from potluck import AGENT, joining
from potluck.datadir import DataDirLock, prepare_data_dir
from potluck.defence.bans import BanRegistry, BanStoreError
from potluck.defence.service import DefenceService
from potluck.engine import RoundEngine
from potluck.errors import ConfigError
from potluck.exchange.dense import DenseService
from potluck.exchange.modules import ModuleExchange
from potluck.exchange.service import UpdateExchange
from potluck.exchange.slices import SliceService
from potluck.exchange.state import StateService
from potluck.identity import P2P_KEY_FILE, NodeIdentity, load_or_create
from potluck.joining import DEFAULT_LISTEN, NodeConfig
from potluck.manifest import Manifest, is_run_id
from potluck.merge import StrategyError
from potluck.rounds.declarations import Declaration, declarations_key
from potluck.rpc import replies
from potluck.rpc.address import write_api_file
from potluck.rpc.server import ControlServer, ControlServicer
from potluck.store.history import HISTORY_FILE, History
from potluck.store.updates import UpdateStore
from potluck.store.versions import VersionStore
from potluck.swarm.addresses import UNREACHABLE_HINT
from potluck.swarm.bulletin import Bulletin
from potluck.swarm.guard import install_ext_depth_guard
from potluck.swarm.host import SwarmHost
from potluck.swarm.membership import LocalState, Membership
from potluck.swarm.records import RecordReason
from potluck.swarm.validator import PeerRecordValidator, RejectionCounters
from potluck.updates.codec import DecodeLimits
from potluck.updates.reasons import UpdateRejected
from potluck.updates.validation import UpdateValidator
from potluck.v1 import control_pb2

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_LISTEN", "HISTORY_FILE", "Node", "NodeConfig", "OpenRound"]

# PublishUpdateResponse.reason when a client-mode node found no keeper to take its update
NO_KEEPER = "no_keeper"


DECLARATION_TTL_S = 3600.0
RECORD_EVERY_S = 10.0
READY_STORE_AFTER_S = 2.0  # a round's records are stored in the DHT only if it is still open by then


class OpenRound(NamedTuple):
    """A round taking updates: its number, the version V_r updates must be based on, V_r's tensors
    (not to be modified) and when collecting ends at the latest (rounds/schedule.py)."""

    round: int
    version: str
    state: dict[str, np.ndarray]
    closes_at: float


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.data_dir = prepare_data_dir(config.data_dir)
        self._lock = DataDirLock(self.data_dir)
        self.identity: NodeIdentity | None = None
        self.host: SwarmHost | None = None
        self.membership: Membership | None = None
        self.bulletin: Bulletin | None = None
        self.exchange: UpdateExchange | None = None
        self.modules: ModuleExchange | None = None  # the module library over the swarm
        self.state_service: StateService | None = None
        self.engine: RoundEngine | None = None
        self._dense: DenseService | None = None  # the dense rounds' channel (exchange/dense.py)
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
        self.versions = VersionStore(self.data_dir / "versions", snapshot_every=cfg.snapshot_every)
        self.manifest = joining.local_manifest(cfg.manifest, cfg.run, self.data_dir, self.versions)
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
        self.bulletin = Bulletin(self.host, self.run, self._peer_ids)
        await self.bulletin.start()  # membership pushes our record with it, beside the DHT copy
        push, ttl = (self.bulletin, validator), cfg.record_ttl_s
        self.membership = Membership(self.host, self.identity, self.run, self.local, ttl_s=ttl, push=push)
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
            self.bans = BanRegistry(joining.bans_path(self.data_dir, self.run))
        except BanStoreError as e:
            raise ConfigError(f"{e}; refusing to start without the run's bans") from None
        validator = UpdateValidator(
            joining.validation_context(self.config, self.run, self.manifest, self.versions, self.local),
            is_banned=self.bans.is_banned,
            max_per_author_round=self.config.max_updates_per_author,
            is_past_version=lambda v: joining.in_history(self.manifest, self.history, v),
        )
        self.exchange = UpdateExchange(
            self.host,
            self.identity,
            self.run,
            UpdateStore(self.data_dir / "updates"),
            validator,
            self._addresses_of,
            bulletin=self.bulletin,
            keepers=self._keeper_ids,
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
            if self.manifest.pacing == "ready":  # rounds of a second: their records are mostly pushes
                self.bulletin.store_after = READY_STORE_AFTER_S
            run_id = self.manifest.run_id
            slice_service, self._dense = SliceService(self.host, run_id), DenseService(self.host, run_id)
            await asyncio.gather(slice_service.start(), self._dense.start())
            self.history = History(self.data_dir / HISTORY_FILE, self.versions)
            self.defence.history = self.history
            try:
                self.engine = RoundEngine(
                    host=self.host,
                    bulletin=self.bulletin,
                    identity=self.identity,
                    manifest=self.manifest,
                    versions=self.versions,
                    history=self.history,
                    exchange=self.exchange,
                    local=self.local,
                    state_service=self.state_service,
                    peers=self.membership.peers,
                    on_new_version=self._new_version,
                    restore_signals=self.restore_signals,
                    task=joining.evaluation_task(self.manifest),
                    aggregates=self.config.role != "client",
                    slice_service=slice_service,
                    dense_service=self._dense,
                    defence=self.defence,
                    probe=joining.probe_rule(self.manifest),  # the task's probe bytes, checked
                )
            except StrategyError as e:
                raise ConfigError(f"the run's merge strategy {self.manifest.strategy!r}: {e}") from None
            self.engine.start()
            self.modules = await ModuleExchange.started(
                self.host, self.identity, self.manifest, self.data_dir, self.bulletin, self._addresses_of
            )

    async def _join_run(self) -> None:
        """Fetch the manifest of ``self.run`` from its peers (checked against the run id), then start."""
        assert self.membership is not None and self.state_service is not None
        self.manifest = await joining.fetch_manifest(
            self.run, self.membership, self.state_service, self.data_dir, self.versions
        )
        logger.info(f"joined run {self.run[:16]} ({self.manifest.task}, quorum {self.manifest.quorum})")
        await self._start_updates_and_rounds()

    def _manifest_bytes(self, run_id: str) -> bytes | None:
        return (
            self.manifest.to_bytes() if self.manifest is not None and self.manifest.run_id == run_id else None
        )

    def _new_version(self) -> None:
        """Our record names our version: re-sign it now, or under "ready" pacing (a version a second,
        and its commit pushed to every peer) at most every RECORD_EVERY_S."""
        assert self.membership is not None and self.manifest is not None
        if self.manifest.pacing != "ready" or time.time() - self.membership.last_published > RECORD_EVERY_S:
            self.membership.republish_now()

    def _peer_ids(self) -> list[str]:
        assert self.membership is not None
        return [p.record.peer_id for p in self.membership.peers()]

    def _keeper_ids(self) -> list[str]:
        """The peers that aggregate (all but client-mode nodes): they take our updates and entries."""
        assert self.membership is not None
        return [p.record.peer_id for p in self.membership.peers() if p.record.role != "client"]

    def _addresses_of(self, peer_id: str) -> list[str]:
        assert self.membership is not None
        return next(
            (list(p.record.addrs) for p in self.membership.peers() if p.record.peer_id == peer_id), []
        )

    # ---- what a contributor uses (potluck.contribute.ContributingNode) ----------------------------

    async def publish(self, data: bytes) -> control_pb2.PublishUpdateResponse:
        """The one way an update enters the run from this node (`update publish`, a contributor):
        validate and hold it; then announce it, or, in client mode (nobody can fetch from us), push it
        to keepers. Not accepted (reason NO_KEEPER) when no keeper took it: it would never leave us."""
        if self.exchange is None:
            return control_pb2.PublishUpdateResponse(
                accepted=False, reason="not_ready", detail="this node has not fetched its run's manifest yet"
            )
        try:
            held = await self.exchange.accept(data, "published")
        except UpdateRejected as e:
            return control_pb2.PublishUpdateResponse(accepted=False, reason=e.reason.value, detail=e.detail)
        assert self.membership is not None  # keepers: any peer not itself a client can take a push
        peers = self.membership.peers()
        keepers = [(p.record.peer_id, list(p.record.addrs)) for p in peers if p.record.role != "client"]
        if self.local.role != "client" and self.manifest is not None and self.manifest.pacing == "ready":
            # a round that closes when its updates are in: hand ours to every keeper now, rather than
            # wait for them to read our announcement
            await self.exchange.push(data, keepers, want=len(keepers))
        elif self.local.role == "client" and not await self.exchange.push(data, keepers):
            return control_pb2.PublishUpdateResponse(
                accepted=False,
                update_id=held.update_id,
                reason=NO_KEEPER,
                detail=f"this node runs in client mode and no keeper took the update "
                f"({len(keepers)} tried); check that keepers of the run are up and reachable",
            )
        return control_pb2.PublishUpdateResponse(accepted=True, update_id=held.update_id)

    async def declare(self, r: int, version: str) -> None:
        """Tell the keepers this node trains for round ``r`` on ``version``: under "ready" pacing the
        round waits for its update (rounds/declarations.py). Nothing to do under "clock" pacing."""
        m = self.manifest
        if m is None or m.pacing != "ready" or self.bulletin is None or self.identity is None:
            return
        now = time.time()
        declaration = Declaration(m.run_id, r, version, self.identity.public_key, now)
        self.bulletin.post(
            declarations_key(m.run_id, r), self.identity.public_key, declaration.sign(self.identity),
            now + DECLARATION_TTL_S, to=self._keeper_ids(), store=lambda: self.round_open(r),
        )  # fmt: skip

    def round_open(self, r: int) -> bool:
        """Round ``r`` is not committed here yet."""
        return self.engine is not None and self.engine.committed_round < r

    async def joined(self, timeout: float) -> Manifest:
        """The run's manifest once its rounds run here (joined by run id: once peers served it);
        ConfigError naming the likely cause after ``timeout`` seconds."""
        give_up = time.monotonic() + timeout
        while self.engine is None or self.manifest is None:
            if time.monotonic() > give_up:
                assert self.host is not None
                boot = self.host.bootstrap
                reason = (
                    f"cannot reach {boot.last_error}; {UNREACHABLE_HINT}"
                    if boot.state == "retrying"
                    else "no peer of the run served its manifest"
                )
                raise ConfigError(f"could not join run {self.run[:16]} within {timeout:.0f}s: {reason}")
            await asyncio.sleep(0.2)
        return self.manifest

    def open_round(self) -> OpenRound | None:
        """The round collecting updates now, with the version they must be based on; None between
        rounds (the engine collects round r only once it holds V_r: committed, synced or unchanged)."""
        e = self.engine
        if e is None or e.status.phase != "collecting":
            return None
        assert self.manifest is not None
        r = e.status.round
        return OpenRound(r, e.version, e.state, e.status.closes_at)

    def round_settled(self, r: int) -> bool:
        """Round ``r`` is over here: committed, or the engine has moved past it."""
        e = self.engine
        return e is not None and (e.committed_round >= r or e.status.round > r)

    def takes_late(self, r: int, version: str) -> bool:
        """Under "ready" pacing an update for round ``r`` onto ``version`` still counts after round r
        closed: in round r + 1 (engine/loop.py), as long as ``version`` is V_{r+1}'s parent."""
        e = self.engine
        return (
            e is not None and e.manifest.pacing == "ready" and r >= e.committed_round
            and version in e.known_bases()
        )  # fmt: skip

    def current_version(self) -> str:
        return self.engine.version if self.engine is not None else self.local.model_version

    def authored(self, r: int) -> bool:
        """This node holds an update of its own for round ``r`` (e.g. published before a restart)."""
        assert self.identity is not None
        me = self.identity.public_key
        return self.exchange is not None and any(
            u.author == me and u.round == r for u in self.exchange.held.values()
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
        for part in (self.defence, self.modules, self.exchange, self.bulletin, self.membership,
                     self.state_service, self._dense):  # fmt: skip
            if part is not None:
                await part.stop()
        if self.host is not None:
            await self.host.stop()
        self._lock.release()

    # ---- control API views (potluck.rpc.replies builds them) ---------------------------------------

    @property
    def rpc_address(self) -> str:
        return self.rpc.address if self.rpc else ""

    def status(self) -> control_pb2.GetStatusResponse:
        return replies.status(self)

    def list_peers(self) -> control_pb2.ListPeersResponse:
        return replies.list_peers(self)

    def list_updates(self) -> control_pb2.ListUpdatesResponse:
        return replies.list_updates(self)
