"""The update exchange: hold validated updates, announce them, serve their bytes, fetch everyone else's.

Data flow (DESIGN.md): publish or fetch -> validate -> hold (disk) -> announce in the DHT ->
serve over libp2p. Every fetched update comes from a holder named in an announcement; its bytes
must hash to the announced id (else the holder is counted and avoided) and pass the validator
(else the id is remembered as rejected, with the reason counted). Once held, a node serves and
announces the update itself, so an update outlives its author.

Defences: announcements by a banned author, or by one that used up its distinct updates for the
round (the validator's rate limit), are not fetched (counted once per update id as ``banned`` /
``rate_limited``); held updates of a banned author are no longer announced. When the validator finds
an equivocation, the second update's bytes are kept beside the first in an evidence store and
handed to ``on_equivocation``; ids in the evidence store are served like held ones, so any node can
fetch both and check the evidence (potluck.defence).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from hivemind.p2p import P2P, P2PContext, PeerID

from potluck.exchange.announcements import MAX_HOLDERS, Announcement, BadAnnouncement, updates_key
from potluck.exchange.chunks import BadStream, NotHeld, TooLarge, chunked, received
from potluck.identity import NodeIdentity, node_id_of
from potluck.store.updates import UpdateStore
from potluck.swarm.host import SwarmHost
from potluck.updates.codec import parse_update
from potluck.updates.reasons import Reason, UpdateRejected
from potluck.updates.validation import Equivocation, UpdateValidator
from potluck.v1 import exchange_pb2
from potluck.wire import WireError, bounded_unpackb

logger = logging.getLogger(__name__)

HANDLER = "potluck.v1.GetUpdate"
PUSH_HANDLER = "potluck.v1.PushUpdate"
PUSH_TIMEOUT_S = 30.0
ANNOUNCE_TTL_S = 120.0
POLL_INTERVAL_S = 1.0
FETCH_TIMEOUT_S = 10.0  # plus the update's size at MIN_FETCH_BYTES_PER_S: a dead holder costs seconds
MIN_FETCH_BYTES_PER_S = 1 << 20
AVOID_HOLDER_S = 300.0
# Reasons that depend on when the update is seen (the round moves on, a base arrives): try again later.
RETRYABLE = frozenset({Reason.FUTURE_ROUND, Reason.UNKNOWN_BASE})
RETRY_S = 10.0


@dataclass(frozen=True)
class HeldUpdate:
    update_id: str
    author: bytes
    round: int
    seq: int
    size: int
    sample_count: int
    base: str
    source: str  # "published" | "fetched" | "stored" (held before a restart)


class FetchFailed(Exception):
    pass


def _id_or_none(data: bytes, max_bytes: int) -> str | None:
    """The update id (sha256 of the body) of an envelope, checking nothing else: is it what we asked for?"""
    try:
        envelope = bounded_unpackb(data, max_bytes, 1, max_array_len=2, max_str_len=0, max_map_len=0)
    except WireError:
        return None
    if type(envelope) is not list or len(envelope) != 2 or type(envelope[0]) is not bytes:
        return None
    return hashlib.sha256(envelope[0]).hexdigest()


class UpdateExchange:
    def __init__(
        self,
        host: SwarmHost,
        identity: NodeIdentity,
        run: str,
        store: UpdateStore,
        validator: UpdateValidator,
        addresses_of: Callable[[str], list[str]],
        *,
        announce_ttl_s: float = ANNOUNCE_TTL_S,
        poll_interval_s: float = POLL_INTERVAL_S,
        evidence_store: UpdateStore | None = None,
        on_equivocation: Callable[[Equivocation, bytes, bytes], None] | None = None,
    ):
        self._host, self._identity, self._run = host, identity, run
        self._store, self.validator = store, validator
        self.evidence_store = evidence_store  # both updates of each equivocation found or verified
        self.on_equivocation = on_equivocation  # (found, first bytes, second bytes), on the event loop
        self._skipped: set[str] = set()  # announced ids not fetched (banned/rate-limited author), counted
        self._addresses_of = addresses_of  # peer id -> multiaddrs, from the peer records
        self._announce_ttl_s, self._poll_interval_s = announce_ttl_s, poll_interval_s
        self.held: dict[str, HeldUpdate] = {}
        self._holders: dict[str, set[str]] = {}  # update id -> peer ids known to hold it
        self._rejected: dict[str, Reason] = {}  # update ids that failed validation for good
        self._avoid: dict[str, float] = {}  # peer id -> until when
        self._inflight: set[str] = set()
        self._retry_after: dict[str, float] = {}  # update id -> when to try a retryable rejection again
        self.fetched = 0
        self.bad_holder_fetches = 0
        self._tasks: list[asyncio.Task] = []
        self._announce_now = asyncio.Event()
        self._validating = asyncio.Lock()
        self._fetches: set[asyncio.Task] = set()

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._load_held()
        await self._host.p2p.add_protobuf_handler(
            HANDLER, self._serve, exchange_pb2.UpdateRequest, stream_output=True
        )
        await self._host.p2p.add_protobuf_handler(
            PUSH_HANDLER, self._receive_push, exchange_pb2.UpdateChunk, stream_input=True
        )
        self._tasks = [
            asyncio.create_task(self._announce_forever(), name="announce-updates"),
            asyncio.create_task(self._fetch_forever(), name="fetch-updates"),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._fetches]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _load_held(self) -> None:
        """Updates held before a restart: re-checked (structure and signature) before being served again."""
        for update_id in self._store.ids():
            try:
                data = self._store.get(update_id)
                parsed = parse_update(data, self.validator.context.limits)
            except (OSError, UpdateRejected) as e:
                logger.warning(f"dropping stored update {update_id[:12]}: {e}")
                self._store.delete(update_id)
                continue
            if parsed.update_id == update_id:
                self._hold(
                    update_id,
                    data,
                    parsed.author,
                    parsed.round,
                    parsed.seq,
                    parsed.sample_count,
                    parsed.base,
                    "stored",
                )

    # ---- accepting updates -------------------------------------------------------------------------

    def set_context(self, *, round: int, known_bases: frozenset[str]) -> None:
        """Move validation on to ``round`` (the round engine calls this); older rounds are forgotten."""
        ctx = self.validator.context
        if (ctx.round, ctx.known_bases) == (round, known_bases):
            return
        self.validator.context = dataclasses.replace(ctx, round=round, known_bases=known_bases)
        self.validator.forget_before(round)
        self._skipped.clear()  # announcements of older rounds are no longer read
        self._retry_after.clear()  # what was too early or on an unknown base may be fine now
        self._announce_now.set()

    def read(self, update_id: str) -> bytes:
        return self._store.get(update_id)

    def rounds_of_interest(self) -> range:
        ctx = self.validator.context
        return range(max(0, ctx.round - ctx.rounds_behind), ctx.round + ctx.rounds_ahead + 1)

    async def accept(self, data: bytes, source: str) -> HeldUpdate:
        """Validate and hold ``data``; UpdateRejected (counted by the validator) if it fails.

        Validation decodes every tensor: it runs off the event loop, one update at a time (the
        validator's replay and equivocation state is not shared between threads).
        """
        async with self._validating:
            return await asyncio.to_thread(self._accept, data, source)

    def _accept(self, data: bytes, source: str) -> HeldUpdate:
        try:
            signed = self.validator.validate(data)
        except UpdateRejected as e:
            if e.reason is Reason.EQUIVOCATION and self.validator.equivocations:
                self._keep_equivocation(self.validator.equivocations[-1], data)
            raise
        if signed.update_id in self.held:
            return self.held[signed.update_id]
        u = signed.update
        held = self._hold(signed.update_id, data, u.author, u.round, u.seq, u.sample_count, u.base, source)
        self._host.call_soon(self._announce_now.set)
        logger.info(
            f"holding update {signed.update_id[:12]} by {node_id_of(u.author)[:12]} "
            f"(round {u.round}, {len(data)} B, {source})"
        )
        return held

    def _hold(
        self,
        update_id: str,
        data: bytes,
        author: bytes,
        round_: int,
        seq: int,
        sample_count: int,
        base: str,
        source: str,
    ) -> HeldUpdate:
        self._store.put(update_id, data)
        held = HeldUpdate(update_id, author, round_, seq, len(data), sample_count, base, source)
        self.held[update_id] = held
        self._holders.setdefault(update_id, set()).add(self._identity.peer_id)
        return held

    def _keep_equivocation(self, found: Equivocation, second: bytes) -> None:
        """Both updates of an equivocation into the evidence store; then tell the defence (on the loop)."""
        try:
            first = self._store.get(found.first_id)
        except OSError as e:
            logger.warning(f"equivocation by {node_id_of(found.author)[:12]}: first update unreadable: {e}")
            return
        if self.evidence_store is not None:
            self.evidence_store.put(found.first_id, first)
            self.evidence_store.put(found.second_id, second)
        if self.on_equivocation is not None:
            callback = self.on_equivocation
            self._host.call_soon(lambda: callback(found, first, second))

    def read_any(self, update_id: str) -> bytes | None:
        """The bytes of a held update or of one kept as evidence; None if this node has neither."""
        stores = [self._store] if update_id in self.held else []
        stores += [self.evidence_store] if self.evidence_store is not None else []
        for store in stores:
            with contextlib.suppress(OSError, ValueError):
                return store.get(update_id)
        return None

    def _servable(self, update_id: str) -> bool:
        return update_id in self.held or (
            self.evidence_store is not None and self.evidence_store.has(update_id)
        )

    # ---- serving -----------------------------------------------------------------------------------

    async def _serve(
        self, request: exchange_pb2.UpdateRequest, context: P2PContext
    ) -> AsyncIterator[exchange_pb2.UpdateChunk]:
        update_id = request.update_id.hex()
        data = await asyncio.to_thread(self.read_any, update_id) if self._servable(update_id) else None
        for chunk in chunked(data):
            yield chunk

    async def _receive_push(
        self, chunks: AsyncIterator[exchange_pb2.UpdateChunk], context: P2PContext
    ) -> exchange_pb2.PushUpdateResponse:
        """A client-mode node hands us its update: bounded receive, then the same validation as any."""
        limit = self.validator.context.limits.max_bytes
        try:
            data = await received(chunks, limit)
        except (NotHeld, BadStream) as e:
            reason = Reason.OVERSIZED if isinstance(e, TooLarge) else Reason.MALFORMED
            return exchange_pb2.PushUpdateResponse(accepted=False, reason=reason.value)
        try:
            held = await self.accept(data, "pushed")
        except UpdateRejected as e:
            return exchange_pb2.PushUpdateResponse(accepted=False, reason=e.reason.value)
        logger.info(f"update {held.update_id[:12]} pushed by {context.remote_id}")
        return exchange_pb2.PushUpdateResponse(accepted=True, update_id=held.update_id)

    async def push(self, data: bytes, keepers: list[tuple[str, list[str]]], want: int = 2) -> int:
        """Hand ``data`` to up to ``want`` keepers (for a node nobody can dial); how many accepted it."""
        accepted = 0
        for peer_id, addrs in keepers:
            try:
                peer = PeerID.from_base58(peer_id)
                if addrs:
                    await self._host.connect(peer, addrs)

                async def chunks() -> AsyncIterator[exchange_pb2.UpdateChunk]:
                    for chunk in chunked(data):
                        yield chunk

                reply = await asyncio.wait_for(
                    self._host.p2p.call_protobuf_handler(
                        peer, PUSH_HANDLER, chunks(), exchange_pb2.PushUpdateResponse
                    ),
                    PUSH_TIMEOUT_S,
                )
            except Exception as e:
                logger.info(f"pushing to {peer_id} failed: {type(e).__name__}: {e}")
                continue
            if reply.accepted:
                accepted += 1
            else:
                logger.warning(f"keeper {peer_id} rejected our update: {reply.reason}")
            if accepted >= want:
                break
        return accepted

    # ---- announcing --------------------------------------------------------------------------------

    async def _announce_forever(self) -> None:
        while True:
            await self._host.bootstrap.connected_event.wait()
            # cleared before announcing: an update held while announce_all runs sets it again, so it is
            # announced at once rather than a third of the TTL later
            self._announce_now.clear()
            try:
                await self.announce_all()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning(f"announcing updates failed: {type(e).__name__}: {e}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._announce_now.wait(), self._announce_ttl_s / 3)

    async def announce_all(self) -> None:
        rounds = self.rounds_of_interest()
        now = time.time()
        if self._host.client_mode:  # nobody can fetch from us: keepers announce what we pushed to them
            return
        for held in list(self.held.values()):
            if held.round not in rounds or self.validator.is_banned(held.author):
                continue
            others = sorted(self._holders.get(held.update_id, set()) - {self._identity.peer_id})
            announcement = Announcement(
                held.update_id,
                held.round,
                held.author,
                held.size,
                (self._identity.peer_id, *others[: MAX_HOLDERS - 1]),
                self._identity.public_key,
                now,
            )
            key, value = updates_key(self._run, held.round), announcement.sign(self._identity)
            await self._host.store(key, held.update_id.encode(), value, now + self._announce_ttl_s)

    # ---- fetching ----------------------------------------------------------------------------------

    async def _fetch_forever(self) -> None:
        while True:
            await self._host.bootstrap.connected_event.wait()
            try:
                await self.fetch_announced()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.debug(f"looking for updates failed: {type(e).__name__}: {e}")
            await asyncio.sleep(self._poll_interval_s)

    async def fetch_announced(self) -> None:
        if not self.validator.context.known_bases:  # no model to check updates against: don't fetch
            return
        wanted: list[Announcement] = []
        for round_ in self.rounds_of_interest():
            for item in (await self._host.get(updates_key(self._run, round_))).values():
                try:
                    announcement = Announcement.verify(item.value)
                except BadAnnouncement as e:
                    logger.debug(f"ignoring announcement: {e}")
                    continue
                if announcement.round != round_:
                    continue
                self._holders.setdefault(announcement.update_id, set()).update(announcement.holders)
                uid = announcement.update_id
                if uid in self.held or uid in self._rejected or uid in self._inflight:
                    continue
                if self._skip(announcement):
                    continue
                if self._retry_after.get(uid, 0.0) > time.monotonic():
                    continue
                wanted.append(announcement)
        for announcement in wanted:
            self._inflight.add(announcement.update_id)
            task = asyncio.create_task(self._fetch(announcement), name=f"fetch-{announcement.update_id[:12]}")
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)

    def _skip(self, announcement: Announcement) -> bool:
        """Don't fetch what a banned author, or one past its rate limit, announces (the author named in
        an announcement is a claim: nothing is remembered for good, the next poll looks again)."""
        if self.validator.is_banned(announcement.author):
            reason = Reason.BANNED
        elif self.validator.budget_spent(announcement.author, announcement.round):
            reason = Reason.RATE_LIMITED
        else:
            return False
        if announcement.update_id not in self._skipped:
            self._skipped.add(announcement.update_id)
            self.validator.counters[reason.value] += 1
        return True

    async def fetch_by_id(self, update_id: str, holders: list[str]) -> bytes | None:
        """The bytes of ``update_id`` from this node or one of ``holders`` (peer ids), checked against the
        id (a hash) and nothing else; None if nobody served them."""
        local = await asyncio.to_thread(self.read_any, update_id)
        if local is not None:
            return local
        limit = self.validator.context.limits.max_bytes
        now = time.monotonic()
        for holder in holders:
            if holder == self._identity.peer_id or self._avoid.get(holder, 0) > now:
                continue
            try:
                timeout = FETCH_TIMEOUT_S + limit / MIN_FETCH_BYTES_PER_S
                data = await asyncio.wait_for(self._download(holder, update_id, limit), timeout)
            except Exception as e:
                logger.debug(f"fetching {update_id[:12]} from {holder} failed: {type(e).__name__}: {e}")
                continue
            if _id_or_none(data, limit) == update_id:
                return data
            self.bad_holder_fetches += 1
            self._avoid[holder] = time.monotonic() + AVOID_HOLDER_S
        return None

    async def _fetch(self, announcement: Announcement) -> None:
        uid = announcement.update_id
        try:
            limit = min(announcement.size, self.validator.context.limits.max_bytes)
            for holder in self._holder_order(uid):
                try:
                    timeout = FETCH_TIMEOUT_S + limit / MIN_FETCH_BYTES_PER_S
                    data = await asyncio.wait_for(self._download(holder, uid, limit), timeout)
                except Exception as e:  # unreachable, slow or misbehaving holder: try the next one
                    logger.debug(f"fetching {uid[:12]} from {holder} failed: {type(e).__name__}: {e}")
                    continue
                if _id_or_none(data, limit) != uid:
                    self.bad_holder_fetches += 1
                    self._avoid[holder] = time.monotonic() + AVOID_HOLDER_S
                    logger.warning(
                        f"holder {holder} served bytes that are not update {uid[:12]}; avoiding it"
                    )
                    continue
                try:
                    await self.accept(data, "fetched")
                    self.fetched += 1
                except UpdateRejected as e:
                    logger.info(f"rejected update {uid[:12]} from {holder}: {e}")
                    if e.reason in RETRYABLE:
                        self._retry_after[uid] = time.monotonic() + RETRY_S
                    else:
                        self._rejected[uid] = e.reason
                return
        finally:
            self._inflight.discard(uid)

    def _holder_order(self, update_id: str) -> list[str]:
        """Holders to try: those with a live peer record first (others may be gone), each group shuffled
        so that one slow or dead holder does not stall every fetch the same way."""
        now = time.monotonic()
        candidates = [
            h
            for h in self._holders.get(update_id, ())
            if h != self._identity.peer_id and self._avoid.get(h, 0) < now
        ]
        random.shuffle(candidates)
        return sorted(candidates, key=lambda h: not self._addresses_of(h))

    async def _download(self, holder: str, update_id: str, limit: int) -> bytes:
        p2p: P2P = self._host.p2p
        peer = PeerID.from_base58(holder)
        addrs = self._addresses_of(holder)
        if addrs:  # p2pd may not know where a holder is yet: tell it, from the holder's peer record
            await self._host.connect(peer, addrs)
        request = exchange_pb2.UpdateRequest(update_id=bytes.fromhex(update_id))
        stream = await p2p.iterate_protobuf_handler(peer, HANDLER, request, exchange_pb2.UpdateChunk)
        try:
            return await received(stream, limit)
        except (NotHeld, BadStream) as e:
            raise FetchFailed(f"holder {holder[:16]}: {e}") from None
