"""The node's place in the swarm: its p2pd (libp2p host) and a supervised hivemind DHT.

The daemon's own process owns p2pd, so the peer id, the listen sockets and our libp2p stream
handlers outlive the DHT: it only holds a replica of the p2pd connection, on a thread of its own
(potluck.swarm.dhtthread). Should its loop end, the host starts a new one on the same p2pd,
re-bootstraps and counts the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hivemind.dht import DHT, DHTNode
from hivemind.dht.validation import RecordValidatorBase
from hivemind.p2p import P2P, P2PDaemonError, PeerID
from hivemind.utils.multiaddr import Multiaddr

from potluck.errors import ConfigError
from potluck.swarm import traffic
from potluck.swarm.addresses import (
    CONNECT_TIMEOUT_S,
    DIAL_BACKOFF,
    UNREACHABLE_HINT,
    check_listen_addr,
    check_port_free,
    dial_reason,
    p2pd_reason,
    parse_initial_peer,
)
from potluck.swarm.dhtthread import ThreadDHT

logger = logging.getLogger(__name__)
T = TypeVar("T")

HIVEMIND_SOCKET_PREFIX = P2P._UNIX_SOCKET_PREFIX  # hivemind's default, restored when a host stops
BOOTSTRAP_BACKOFF_S = (1.0, 30.0)  # first retry delay, cap
DHT_CALL_TIMEOUT_S = 15.0


@dataclass
class BootstrapState:
    initial_peers: list[str]
    state: str = "none"  # none | connecting | connected | retrying
    attempts: int = 0
    last_error: str = ""
    next_retry_at: float = 0.0
    connected_event: asyncio.Event = field(default_factory=asyncio.Event)


class SwarmHost:
    def __init__(
        self,
        *,
        identity_path: Path,
        listen: Sequence[str],
        announce: Sequence[str] = (),
        initial_peers: Sequence[str] = (),
        validators: Sequence[RecordValidatorBase] = (),
        on_dht_restart: Callable[[], Awaitable[None]] | None = None,
        client_mode: bool = False,
    ):
        self._identity_path = identity_path
        self._listen = [check_listen_addr(a) for a in listen]
        self._announce = list(announce)
        self._initial = [parse_initial_peer(p) for p in initial_peers]
        self._validators = list(validators)
        self._on_dht_restart = on_dht_restart
        self.client_mode = client_mode  # behind NAT: the DHT serves no requests, only makes them
        self.bootstrap = BootstrapState(initial_peers=list(initial_peers))
        self.dht_restarts = 0
        self.addrs: list[str] = []  # visible multiaddrs, refreshed by visible_addrs()
        self._p2p: P2P | None = None
        self._dht: ThreadDHT | None = None
        self._dial_reasons: dict[str, str] = {}  # peer id -> why the last real dial failed
        self._socket_dir = ""
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self.traffic = traffic.Traffic()  # bytes on the wire, by kind (created before any child forks)

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        # p2pd and its clients talk over unix sockets; keep ours in a private directory we can clean.
        self._loop = asyncio.get_running_loop()
        for addr in self._listen:  # p2pd shares a port with another p2pd (SO_REUSEPORT): refuse first
            check_port_free(addr)
        self._socket_dir = tempfile.mkdtemp(prefix="potluck-p2p-")
        # p2pd, this process's client and every replica (the DHT, averagers) put their sockets here;
        # restored on stop, so other P2P users in the process (tests) get hivemind's default again
        P2P._UNIX_SOCKET_PREFIX = f"/unix{self._socket_dir}/"
        traffic.install_p2p_hooks()
        try:
            self._p2p = await P2P.create(
                host_maddrs=self._listen,
                announce_maddrs=self._announce or None,
                identity_path=str(self._identity_path),
                check_if_identity_free=False,  # the data dir lock already makes the identity ours alone
            )
        except P2PDaemonError as e:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            P2P._UNIX_SOCKET_PREFIX = HIVEMIND_SOCKET_PREFIX
            raise ConfigError(f"cannot start p2pd on {', '.join(self._listen)}: {p2pd_reason(e)}") from None
        traffic.register(self._p2p, self.traffic.counters)
        self.traffic.watch(self._p2p._child.pid if self._p2p._child is not None else None)
        self._start_dht()
        if self._initial:
            self._tasks.append(asyncio.create_task(self._bootstrap_forever(), name="bootstrap"))
        else:
            self.bootstrap.state = "none"
            self.bootstrap.connected_event.set()
        self._tasks.append(asyncio.create_task(self._supervise(), name="dht-supervisor"))
        self._tasks.append(asyncio.create_task(self._sample_traffic(), name="traffic"))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._dht is not None:
            await asyncio.to_thread(self._stop_dht, self._dht)
        if self._p2p is not None:
            traffic.unregister(self._p2p)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._p2p.shutdown(), timeout=3)
        shutil.rmtree(self._socket_dir, ignore_errors=True)
        if f"/unix{self._socket_dir}/" == P2P._UNIX_SOCKET_PREFIX:
            P2P._UNIX_SOCKET_PREFIX = HIVEMIND_SOCKET_PREFIX

    @staticmethod
    def _stop_dht(dht: ThreadDHT) -> None:
        dht.shutdown(timeout=2)  # it keeps no state, and p2pd (ours) goes down next

    def _start_dht(self) -> None:
        assert self._p2p is not None
        self._dht = ThreadDHT(
            p2p=self._p2p,
            start=True,
            record_validators=self._validators,
            await_ready=True,
            client_mode=self.client_mode,
            # every potluck read asks the swarm for the latest value, so hivemind's background
            # re-reads of values it cached (before they expire) are traffic nobody uses
            cache_refresh_before_expiry=0,
        )

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self._dht is None or self._dht.is_alive() or self._stopping:
                continue
            self.dht_restarts += 1
            logger.warning(f"the DHT stopped; restarting it (restart #{self.dht_restarts})")
            self._remove_stale_sockets()
            try:
                await asyncio.to_thread(self._start_dht)
            except Exception as e:
                logger.error(f"DHT restart failed: {e}; retrying")
                continue
            if self._initial:
                self.bootstrap.connected_event.clear()
                self._tasks.append(asyncio.create_task(self._bootstrap_forever(), name="bootstrap"))
            if self._on_dht_restart is not None:
                await self._on_dht_restart()

    async def _sample_traffic(self) -> None:
        while True:
            self.traffic.sample()
            await asyncio.sleep(traffic.SAMPLE_S)

    def _remove_stale_sockets(self) -> None:
        """A stopped DHT may leave its p2pd client socket behind; keep only the ones p2pd and we use."""
        assert self._p2p is not None
        alive = {self._p2p._daemon_listen_maddr["unix"], self._p2p._client_listen_maddr["unix"]}
        for entry in Path(self._socket_dir).iterdir():
            if str(entry) not in alive:
                entry.unlink(missing_ok=True)

    # ---- bootstrap -------------------------------------------------------------------------------

    async def _bootstrap_forever(self) -> None:
        """Reach the initial peers, retrying with exponential backoff until one answers; never raises.
        The first failure is one WARN line naming the addresses and what to check; retries log at DEBUG."""
        delay, cap = BOOTSTRAP_BACKOFF_S
        while True:
            self.bootstrap.state = "connecting" if self.bootstrap.attempts == 0 else "retrying"
            self.bootstrap.attempts += 1
            try:
                responded = await self._bootstrap_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                responded, self.bootstrap.last_error = 0, f"{type(e).__name__}: {e}"
            if responded:
                self.bootstrap.state, self.bootstrap.last_error = "connected", ""
                self.bootstrap.connected_event.set()
                logger.info(f"bootstrapped: {responded}/{len(self._initial)} initial peers answered")
                return
            self.bootstrap.state = "retrying"
            self.bootstrap.next_retry_at = time.time() + delay
            first = self.bootstrap.attempts == 1
            logger.log(
                logging.WARNING if first else logging.DEBUG,
                f"cannot reach the initial peers: {self.bootstrap.last_error or 'no reply'}"
                + (
                    f"; {UNREACHABLE_HINT}; retrying in the background"
                    if first
                    else f"; retry in {delay:.0f}s"
                ),
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, cap)

    async def _bootstrap_once(self) -> int:
        responded, self.bootstrap.last_error = await self._dial(
            [(peer, [str(addr)]) for peer, addr in self._initial]
        )
        return responded

    async def rejoin(self, known: Sequence[tuple[str, list[str]]]) -> int:
        """Dial the initial peers and peers seen before (``(peer id, addrs)``) and ping them into the DHT's
        routing table: for a node that lost every peer (a cut link, a long suspend). Never raises."""
        candidates = [(peer, [str(addr)]) for peer, addr in self._initial]
        for peer_id, addrs in known:
            with contextlib.suppress(Exception):
                candidates.append((PeerID.from_base58(peer_id), list(addrs)))
        try:
            responded, error = await self._dial(candidates)
        except Exception as e:
            responded, error = 0, f"{type(e).__name__}: {e}"
        if responded:
            logger.info(f"rejoined the swarm: {responded} peers answered")
        else:  # before the first bootstrap the bootstrap loop reports the initial peers already
            logger.log(
                logging.WARNING if self.bootstrap.state in ("connected", "none") else logging.DEBUG,
                f"isolated: none of {len(candidates)} known peers answered ({error or 'no reply'})",
            )
        return responded

    async def _dial(self, candidates: Sequence[tuple[PeerID, list[str]]]) -> tuple[int, str]:
        """Connect to each candidate, ping those reached into the DHT: (how many answered, errors)."""
        errors, reached = [], []
        for peer, addrs in candidates:
            try:
                await self.connect(peer, addrs)
                reached.append(peer)
            except Exception as e:
                peer_id = peer.to_base58()
                reason = dial_reason(e)
                if reason == DIAL_BACKOFF:  # libp2p did not dial again: the reason is the last real one
                    reason = self._dial_reasons.get(peer_id, reason)
                self._dial_reasons[peer_id] = reason
                where = addrs[0].split("/p2p/", 1)[0] if addrs else ""
                more = f" (+{len(addrs) - 1} addresses)" if len(addrs) > 1 else ""
                errors.append(f"{where}/p2p/{peer_id}{more}: {reason}")
        error = "; ".join(errors)[:500]
        if not reached:
            return 0, error
        return await self.run_in_dht(functools.partial(_ping_and_populate, reached)), error

    async def connect(self, peer: PeerID, addrs: Sequence[str]) -> None:
        """Dial ``peer`` at ``addrs`` (multiaddrs, with or without a /p2p/ suffix)."""
        assert self._p2p is not None
        maddrs = [Multiaddr(a.split("/p2p/", 1)[0]) for a in addrs]
        # P2P has no public "dial this address"; hivemind itself uses the daemon client's connect
        await asyncio.wait_for(self._p2p._client.connect(peer, maddrs), CONNECT_TIMEOUT_S)

    @property
    def dht(self) -> DHT:
        """The current DHT's handle (replaced when it is restarted)."""
        return self._require_dht()

    @property
    def p2p(self) -> P2P:
        """The node's libp2p host (p2pd): add stream handlers here, they survive DHT restarts."""
        assert self._p2p is not None
        return self._p2p

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the host's event loop (safe from worker threads)."""
        self._loop.call_soon_threadsafe(callback)

    # ---- DHT access --------------------------------------------------------------------------------

    async def run_in_dht(
        self, fn: Callable[[DHT, DHTNode], Awaitable[T]], timeout: float = DHT_CALL_TIMEOUT_S
    ) -> T:
        return await asyncio.wait_for(asyncio.wrap_future(self._require_dht().call(fn)), timeout)

    async def store(self, key: str, subkey: bytes, value: bytes, expiration_time: float) -> bool:
        kind = traffic.kind_of_key(key)  # the DHT counts the call's bytes as this kind
        return bool(
            await self.run_in_dht(
                functools.partial(traffic.dht_store, kind, key, subkey, value, expiration_time)
            )
        )

    async def get(self, key: str) -> dict[Any, Any]:
        """The subkey -> ValueWithExpiration dictionary under ``key`` (empty if none)."""
        found = await self.run_in_dht(functools.partial(traffic.dht_get, traffic.kind_of_key(key), key))
        if found is None or not isinstance(found.value, dict):
            return {}
        return found.value

    async def connected_peers(self) -> set[str]:
        """Peer ids p2pd holds a connection to (asks the local p2pd only)."""
        assert self._p2p is not None
        return {info.peer_id.to_base58() for info in await self._p2p.list_peers()}

    async def visible_addrs(self) -> list[str]:
        assert self._p2p is not None
        self.addrs = [str(a) for a in await self._p2p.get_visible_maddrs()]
        return self.addrs

    @property
    def peer_id(self) -> str:
        assert self._p2p is not None
        return self._p2p.peer_id.to_base58()

    @property
    def listen(self) -> list[str]:
        return list(self._listen)

    def child_pids(self) -> list[int]:
        """Processes this host started: p2pd (for tests and diagnostics)."""
        if self._p2p is not None and self._p2p._child is not None:
            return [self._p2p._child.pid]
        return []

    def _require_dht(self) -> ThreadDHT:
        if self._dht is None or not self._dht.is_alive():
            raise ConnectionError("the DHT is not running (restarting)")
        return self._dht


async def _ping_and_populate(peers: list[PeerID], _dht: DHT, node: DHTNode) -> int:
    """Runs on the DHT's loop: ping the reached peers into the routing table, then look up our
    own id so the table fills with our neighbours. Returns how many peers answered."""
    answers = await asyncio.gather(*(node.protocol.call_ping(peer) for peer in peers))
    responded = sum(answer is not None for answer in answers)
    if responded:
        await node.find_nearest_nodes([node.node_id])
    return responded
