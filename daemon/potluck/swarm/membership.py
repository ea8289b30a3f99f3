"""Who is online in this run: publish our signed peer record, keep a fresh view of everyone else's.

Reading the view is a DHT lookup that every other node answers with every record, so its cadence is
most of an idle node's traffic: the view is read every ``view_interval_s`` while it changes or while
this node is alone, and half as often after each read that finds nothing new, up to a quarter of the
record TTL (potluck.swarm.cadence). A new libp2p connection (checked with the local p2pd every
``view_interval_s``), :meth:`Membership.wake` and a failed read bring it back to the fast cadence.

A record stored in the DHT reaches a peer only at that peer's next view read, after the store's own
lookup: 1-2.5 s on a loaded box. So the record is also pushed (given a bulletin and the DHT's
validator): on the first publish to every peer this node knows (its initial peers and every peer p2pd
is connected to, which the DHT's bootstrap lookup has just reached), and to each peer that appears in
its view later (a peer that left the view and came back is told again). A pushed record is checked by
the DHT's own validator (signature over the run's key, subkey, value and expiry; size; sequence),
refusals counted by reason beside the DHT's, and joins the view at once; bounded to MAX_PUSHED
records. The push is only faster, never more trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils.serializer import MSGPackSerializer

from potluck.identity import NodeIdentity, node_id_of
from potluck.swarm.bulletin import Bulletin
from potluck.swarm.cadence import Cadence
from potluck.swarm.host import SwarmHost
from potluck.swarm.records import PeerRecord, RecordRejected, peers_key, public_key_in, subkey_for
from potluck.swarm.validator import PeerRecordValidator

logger = logging.getLogger(__name__)
REJOIN_AFTER_S = 5.0  # alone this long (no live peer record): dial everyone we knew
MAX_KNOWN_PEERS = 64
MAX_VIEW_INTERVAL_S = 10.0
MAX_PUSHED = 256  # pushed records held (one per node): more than a run has nodes


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
        push: tuple[Bulletin, PeerRecordValidator] | None = None,
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
        self._push = push
        self._key_id = DHTID.generate(source=self._key).to_bytes()  # the key as the DHT signs it
        self._pushed: dict[str, PeerInfo] = {}  # node id -> the newest record pushed to us
        self._signed: tuple[bytes, bytes, float] | None = None  # our record as the DHT holds it
        self._told: set[str] = set()  # peer ids our record was pushed to
        self._in_view: set[str] = set()  # peer ids in the view when we last looked
        if push is not None:
            push[0].claim(self._key, self.take_pushed)

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
        if self._push is not None:
            first = self._signed is None
            self._sign(record.encode(), now + self.ttl_s)
            if first:  # before the store's lookup: whoever we know has our record in one round trip
                known = {str(p) for p in self._host.bootstrap.initial_peers}
                with contextlib.suppress(Exception):
                    known |= await self._host.connected_peers()
                self._tell(known | {p.record.peer_id for p in self.peers()})
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

    # ---- pushing ----------------------------------------------------------------------------------

    def _sign(self, value: bytes, expiration: float) -> None:
        """Our record exactly as the DHT signs and stores it (hivemind serializes subkey and value)."""
        assert self._push is not None
        subkey, body = MSGPackSerializer.dumps(self._subkey), MSGPackSerializer.dumps(value)
        signed = self._push[1].sign_value(DHTRecord(self._key_id, subkey, body, expiration))
        self._signed = (subkey, signed, expiration)

    def _tell(self, peer_ids: set[str]) -> None:
        """Push our signed record to ``peer_ids`` (multiaddrs are cut to their peer id); nothing awaited."""
        ids = {p.rsplit("/p2p/", 1)[-1] for p in peer_ids} - {self._identity.peer_id}
        if self._push is None or self._signed is None or not ids:
            return
        self._told |= ids
        self._push[0].post(self._key, *self._signed, to=ids, store=False)

    def _tell_new_peers(self) -> None:
        """Push our record to peers that appeared in the view since we last told; a peer that left the
        view (a restart, a cut) is told again when it comes back."""
        here = {p.record.peer_id for p in self.peers()}
        self._told -= self._in_view - here
        self._in_view = here
        self._tell(here - self._told)

    def take_pushed(self, subkey: bytes, value: bytes, expiration: float) -> bool:
        """A peer record pushed to us (the bulletin's claim): checked as the DHT checks it, then viewed."""
        assert self._push is not None
        checked = self._push[1].check(DHTRecord(self._key_id, subkey, value, expiration))
        if checked is None or checked.public_key == self._identity.public_key:
            return False
        now = self._clock()
        node_id = node_id_of(checked.public_key)
        if node_id not in self._pushed and len(self._pushed) >= MAX_PUSHED:
            self._pushed = {k: p for k, p in self._pushed.items() if p.expires_at > now}
            if len(self._pushed) >= MAX_PUSHED:
                return False
        info = PeerInfo(node_id, checked.record, expiration)
        held = self._pushed.get(node_id)
        if held is None or held.record.sequence <= info.record.sequence:
            self._pushed[node_id] = info
        held = self._peers.get(node_id)
        if held is None or held.record.sequence < info.record.sequence:
            self._peers[node_id] = info
        self._tell_new_peers()
        return True

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
        for node_id, info in list(self._pushed.items()):  # pushed records the DHT has no newer copy of
            held = fresh.get(node_id)
            if info.expires_at <= now or (held is not None and held.record.sequence >= info.record.sequence):
                del self._pushed[node_id]
            elif held is None or held.record.sequence < info.record.sequence:
                fresh[node_id] = info
        self._peers = fresh
        self._tell_new_peers()

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
