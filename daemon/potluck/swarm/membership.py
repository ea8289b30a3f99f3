"""Who is online in this run: publish our signed peer record, keep a fresh view of everyone else's.

Reading the view is a DHT lookup that every other node answers with every record, so its cadence is
most of an idle node's traffic: the view is read every ``view_interval_s`` while it changes or while
this node is alone, and half as often after each read that finds nothing new, up to a quarter of the
record TTL (potluck.swarm.cadence). A new libp2p connection (checked with the local p2pd every
``view_interval_s``), :meth:`Membership.wake` and a failed read bring it back to the fast cadence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from potluck.identity import NodeIdentity, node_id_of
from potluck.swarm.cadence import Cadence
from potluck.swarm.host import SwarmHost
from potluck.swarm.records import PeerRecord, RecordRejected, peers_key, public_key_in, subkey_for

logger = logging.getLogger(__name__)
REJOIN_AFTER_S = 5.0  # alone this long (no live peer record): dial everyone we knew
MAX_KNOWN_PEERS = 64
MAX_VIEW_INTERVAL_S = 10.0


@dataclass(frozen=True)
class PeerInfo:
    node_id: str
    record: PeerRecord
    expires_at: float


@dataclass
class LocalState:
    """What this node says about itself in its record; later issues update round and model version."""

    role: str
    agent: str
    round: int = 0
    model_version: str = ""


class Membership:
    def __init__(
        self,
        host: SwarmHost,
        identity: NodeIdentity,
        run: str,
        local: LocalState,
        *,
        ttl_s: float,
        view_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ):
        self._host, self._identity, self._local = host, identity, local
        self._key = peers_key(run)
        self._subkey = subkey_for(identity.public_key)
        self.ttl_s = ttl_s
        self._clock = clock
        self._sequence = 0
        self._peers: dict[str, PeerInfo] = {}
        self._known: dict[str, list[str]] = {}  # peer id -> last addresses seen, newest last
        self._tasks: list[asyncio.Task] = []
        self._republish = asyncio.Event()
        self._connected: set[str] = set()  # peer ids p2pd was connected to at the last check
        # a quarter of the TTL at most: a live peer's record is read again before the copy we hold expires
        self.view = Cadence(view_interval_s, min(MAX_VIEW_INTERVAL_S, ttl_s / 4))
        self.view_reads = 0
        self.last_published = 0.0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._publish_forever(), name="publish-record"),
            asyncio.create_task(self._watch_forever(), name="watch-peers"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def republish_now(self) -> None:
        self._republish.set()

    def wake(self) -> None:
        """Read the view now and at the fast cadence again (call when peers are expected to change)."""
        self.view.wake()

    def peers(self) -> list[PeerInfo]:
        """Live peers (records not yet expired), excluding this node, ordered by node id."""
        now = self._clock()
        return sorted((p for p in self._peers.values() if p.expires_at > now), key=lambda p: p.node_id)

    # ---- publishing ----------------------------------------------------------------------------------

    def _next_sequence(self) -> int:
        # time-based so that a restarted node's records are newer than any it signed before
        self._sequence = max(self._sequence + 1, time.time_ns() // 1000)
        return self._sequence

    async def publish_once(self) -> bool:
        now = self._clock()
        record = PeerRecord(
            peer_id=self._identity.peer_id,
            addrs=tuple(await self._host.visible_addrs()),
            role=self._local.role,
            agent=self._local.agent,
            round=self._local.round,
            model_version=self._local.model_version,
            timestamp=now,
            sequence=self._next_sequence(),
        )
        ok = await self._host.store(self._key, self._subkey, record.encode(), now + self.ttl_s)
        if ok:
            self.last_published = now
        return ok

    async def _publish_forever(self) -> None:
        # Refresh at a third of the TTL: two refreshes can fail before the record expires.
        while True:
            await self._host.bootstrap.connected_event.wait()
            try:
                ok = await self.publish_once()
                if not ok:
                    logger.warning("peer record was not stored by any DHT node; retrying")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                ok = False
                logger.warning(f"publishing peer record failed: {type(e).__name__}: {e}")
            self._republish.clear()
            delay = self.ttl_s / 3 if ok else min(2.0, self.ttl_s / 3)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._republish.wait(), delay)

    # ---- watching --------------------------------------------------------------------------------

    async def refresh_view(self) -> None:
        entries = await self._host.get(self._key)
        now = self._clock()
        fresh: dict[str, PeerInfo] = {}
        for subkey, item in entries.items():
            # hivemind hands subkeys back deserialized; the DHT validator has checked the signature
            public_key = public_key_in(subkey) if isinstance(subkey, bytes) else None
            if public_key is None or public_key == self._identity.public_key or item.expiration_time <= now:
                continue
            try:
                record = PeerRecord.decode(item.value)
            except RecordRejected as e:
                logger.debug(f"skipping peer record: {e}")
                continue
            fresh[node_id_of(public_key)] = PeerInfo(node_id_of(public_key), record, item.expiration_time)
        self._peers = fresh

    def _view_signature(self) -> dict[str, tuple]:
        """What a change of the view means: who is there, where and in what role (not the version or the
        round, which every peer moves on each round: under "ready" pacing every second, and new versions
        reach a node as pushed commits; nor the timestamp of a record re-signed every third of the TTL)."""
        return {p.node_id: (p.record.addrs, p.record.role) for p in self.peers()}

    async def _new_connection(self) -> bool:
        """Whether p2pd connected to a peer it was not connected to at the last check (no network)."""
        try:
            connected = await self._host.connected_peers()
        except Exception:
            return False
        new = bool(connected - self._connected)
        self._connected = connected
        return new

    async def _watch_forever(self) -> None:
        alone_since: float | None = None
        next_read = 0.0
        while True:
            woken = self.view.take_wake() or await self._new_connection()
            if woken or time.monotonic() >= next_read:
                before = self._view_signature()
                try:
                    await self.refresh_view()
                    self.view_reads += 1
                    peers = self.peers()
                    changed = self._view_signature() != before
                    for p in peers:  # remember where peers were, to find them again after a cut
                        self._known.pop(p.record.peer_id, None)
                        self._known[p.record.peer_id] = list(p.record.addrs)
                    self._known = dict(list(self._known.items())[-MAX_KNOWN_PEERS:])
                    if peers or not (self._known or self._host.bootstrap.initial_peers):
                        alone_since = None
                    elif alone_since is None:
                        alone_since = time.monotonic()
                    elif time.monotonic() - alone_since > REJOIN_AFTER_S:
                        if await self._host.rejoin(list(self._known.items())):
                            self.republish_now()
                        alone_since = time.monotonic()  # try again after another while
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    logger.debug(f"refreshing the peer view failed: {type(e).__name__}: {e}")
                    changed, peers = True, []
                # after a wake (a new connection: its record may follow in a moment) read again soon
                next_read = time.monotonic() + self.view.after(changed or woken or not peers)
            await self.view.sleep(self.view.base_s)  # then check for a wake or a new connection
