"""The update exchange: hold validated updates, announce them, serve their bytes, fetch everyone else's.

Data flow (DESIGN.md): publish, push or fetch (exchange/fetching.py) -> validate -> hold (bytes on
disk, the decoded update in memory for the round engine) -> announce in the DHT -> serve over
libp2p. Every fetched update comes from a holder named in an announcement; its bytes must hash to
the announced id (else the holder is counted and avoided) and pass the validator (else the id is
remembered as rejected, with the reason counted). Once held, a node serves and announces the
update itself, so an update outlives its author. A client-mode node, which nobody can dial, pushes
its own updates to keepers instead (:meth:`UpdateExchange.push`).

The round engine reads what is held through :meth:`~UpdateExchange.holding`,
:meth:`~UpdateExchange.held_update` and :meth:`~UpdateExchange.decoded` (its AcceptedUpdates
protocol): each accepted update is parsed, verified and decoded once, by the validator.

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
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from hivemind.p2p import P2PContext, PeerID

from potluck.exchange.announcements import MAX_HOLDERS, Announcement, updates_key
from potluck.exchange.chunks import BadStream, NotHeld, TooLarge, chunked, received
from potluck.exchange.fetching import HANDLER, POLL_INTERVAL_S, RETRYABLE, Fetcher
from potluck.identity import NodeIdentity, node_id_of
from potluck.store.updates import UpdateStore
from potluck.swarm.bulletin import Bulletin
from potluck.swarm.host import SwarmHost
from potluck.updates.codec import ParsedUpdate, SignedUpdate, Update, decode_update, parse_update
from potluck.updates.reasons import Reason, UpdateRejected
from potluck.updates.validation import EquivocationSeen, UpdateValidator
from potluck.v1 import exchange_pb2

logger = logging.getLogger(__name__)

PUSH_HANDLER = "potluck.v1.PushUpdate"
PUSH_TIMEOUT_S = 30.0
ANNOUNCE_TTL_S = 120.0
MAX_EARLY = 64  # pushed updates kept for the next round (a round's worth of contributors)


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
        bulletin: Bulletin | None = None,
        keepers: Callable[[], list[str]] = list,
        announce_ttl_s: float = ANNOUNCE_TTL_S,
        poll_interval_s: float = POLL_INTERVAL_S,
        evidence_store: UpdateStore | None = None,
        on_equivocation: Callable[[EquivocationSeen, bytes, bytes], None] | None = None,
    ):
        self._host, self._identity, self._run = host, identity, run
        # a node's records go to the DHT and are pushed to ``keepers`` (peer ids; swarm/bulletin.py)
        bulletin = bulletin if bulletin is not None else Bulletin(host, run, list)
        self._bulletin, self._keepers = bulletin, keepers
        self._store, self.validator = store, validator
        self.evidence_store = evidence_store  # both updates of each equivocation found or verified
        self.on_equivocation = on_equivocation  # (found, first bytes, second bytes), on the event loop
        self._announce_ttl_s = announce_ttl_s
        self._held: dict[str, HeldUpdate] = {}
        # the accepted updates of the rounds of interest, as the validator decoded them: the round engine
        # merges these (the bytes stay in the store, for serving)
        self._decoded: dict[str, SignedUpdate] = {}
        self.fetcher = Fetcher(
            host, bulletin, identity, run, validator, addresses_of, have=self._held.__contains__,
            accept=self.accept, read_local=self.read_any, poll_interval_s=poll_interval_s,
        )  # fmt: skip
        self._tasks: list[asyncio.Task] = []
        self._announce_now = asyncio.Event()
        self._announced: dict[str, float] = {}  # update id -> when we last announced it
        self._early: dict[str, bytes] = {}  # pushed updates refused as too early, tried at the next round
        self._validating = asyncio.Lock()

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
            asyncio.create_task(self.fetcher.fetch_forever(), name="fetch-updates"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.fetcher.stop()

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
                self._hold(data, parsed, "stored")  # decoded when the engine first asks (decoded())

    # ---- accepting updates -------------------------------------------------------------------------

    def set_context(self, *, round: int, known_bases: frozenset[str]) -> None:
        """Move validation on to ``round`` (the round engine calls this); older rounds are forgotten."""
        ctx = self.validator.context
        if (ctx.round, ctx.known_bases) == (round, known_bases):
            return
        self.validator.context = dataclasses.replace(ctx, round=round, known_bases=known_bases)
        self.validator.forget_before(round - ctx.rounds_behind)
        self.fetcher.new_round()
        oldest = self.rounds_of_interest().start
        for uid, u in list(self._decoded.items()):  # list(): the validating thread may add meanwhile
            if u.update.round < oldest:
                self._decoded.pop(uid, None)  # on disk still: decoded() decodes it again if asked
        self._announce_now.set()
        if self._early:  # pushed a moment before this node moved on: try them now
            early, self._early = list(self._early.values()), {}
            task = asyncio.get_running_loop().create_task(self._accept_early(early), name="accept-early")
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)

    async def _accept_early(self, pushed: list[bytes]) -> None:
        for data in pushed:
            with contextlib.suppress(UpdateRejected):  # counted by the validator; still early: gone
                await self.accept(data, "pushed")

    def rounds_of_interest(self) -> range:
        return self.fetcher.rounds_of_interest()

    # ---- what this node holds (the round engine's view: potluck.engine.updates.AcceptedUpdates) ------

    @property
    def held(self) -> Mapping[str, HeldUpdate]:
        """update id -> what this node holds, read-only (the validating thread adds to it)."""
        return MappingProxyType(self._held)

    def holding(self, round_: int | None = None) -> list[HeldUpdate]:
        """The held updates (of ``round_``), a snapshot."""
        held = list(self._held.values())
        return held if round_ is None else [u for u in held if u.round == round_]

    def held_update(self, update_id: str) -> HeldUpdate | None:
        return self._held.get(update_id)

    def decoded(self, update_id: str) -> SignedUpdate:
        """A held update, decoded: as the validator decoded it on acceptance, or (held before a restart,
        or of an older round) decoded again from the store. KeyError if this node does not hold it."""
        signed = self._decoded.get(update_id)
        if signed is None:
            if update_id not in self._held:
                raise KeyError(update_id)
            signed = decode_update(self._store.get(update_id), self.validator.context.limits)
            if signed.update.round in self.rounds_of_interest():
                self._decoded[update_id] = signed
        return signed

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
        if signed.update_id in self._held:
            return self._held[signed.update_id]
        u = signed.update
        held = self._hold(data, u, source, signed.update_id)
        self._decoded[signed.update_id] = signed
        self._host.call_soon(self._announce_now.set)
        logger.info(
            f"holding update {signed.update_id[:12]} by {node_id_of(u.author)[:12]} "
            f"(round {u.round}, {len(data)} B, {source})"
        )
        return held

    def _hold(self, data: bytes, u: Update | ParsedUpdate, source: str, update_id: str = "") -> HeldUpdate:
        update_id = update_id or u.update_id  # a ParsedUpdate knows its id, an Update does not
        self._store.put(update_id, data)
        held = HeldUpdate(update_id, u.author, u.round, u.seq, len(data), u.sample_count, u.base, source)
        self._held[update_id] = held
        self.fetcher.holders.setdefault(update_id, set()).add(self._identity.peer_id)
        return held

    def _keep_equivocation(self, found: EquivocationSeen, second: bytes) -> None:
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
        stores = [self._store] if update_id in self._held else []
        stores += [self.evidence_store] if self.evidence_store is not None else []
        for store in stores:
            with contextlib.suppress(OSError, ValueError):
                return store.get(update_id)
        return None

    def _servable(self, update_id: str) -> bool:
        return update_id in self._held or (
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
            if e.reason in RETRYABLE and len(self._early) < MAX_EARLY:
                # the pusher committed the next version a moment before us: keep it for our next round
                self._early[hashlib.sha256(data).hexdigest()] = data
            return exchange_pb2.PushUpdateResponse(accepted=False, reason=e.reason.value)
        logger.info(f"update {held.update_id[:12]} pushed by {context.remote_id}")
        return exchange_pb2.PushUpdateResponse(accepted=True, update_id=held.update_id)

    async def push(self, data: bytes, keepers: list[tuple[str, list[str]]], want: int = 2) -> int:
        """Hand ``data`` to ``want`` keepers at a time until ``want`` accepted it (a node nobody can dial
        needs two; a reachable contributor hands it to every keeper, which saves them the announcement
        round trip); how many accepted it."""
        accepted = 0
        for i in range(0, len(keepers), max(1, want)):
            replies = await asyncio.gather(*(self._push_one(data, *k) for k in keepers[i : i + max(1, want)]))
            accepted += sum(replies)
            if accepted >= want:
                break
        return accepted

    async def _push_one(self, data: bytes, peer_id: str, addrs: list[str]) -> bool:
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
            return False
        if not reply.accepted:
            if reply.reason in {r.value for r in RETRYABLE}:  # it keeps it for its next round
                logger.info(f"keeper {peer_id} is a round behind: it holds our update for its next round")
            else:
                logger.warning(f"keeper {peer_id} rejected our update: {reply.reason}")
        return reply.accepted

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
        for held in self.holding():
            if held.round not in rounds or self.validator.is_banned(held.author):
                continue
            if self._announced.get(held.update_id, 0.0) > now - self._announce_ttl_s / 3:
                continue  # announced lately: a new holding must not re-announce the whole round
            others = sorted(self.fetcher.holders.get(held.update_id, set()) - {self._identity.peer_id})
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
            first = held.update_id not in self._announced
            # news of our own update goes to every keeper at once; others' updates reached the keepers
            # from their authors: we only tell the DHT, and only if the round still wants it by then
            to = self._keepers() if first and held.source == "published" else []
            still_wanted = (lambda r=held.round: r in self.rounds_of_interest()) if first else True
            self._bulletin.post(
                key, held.update_id.encode(), value, now + self._announce_ttl_s, to=to, store=still_wanted
            )
            self._announced[held.update_id] = now
        for uid in [u for u in self._announced if u not in self._held]:
            del self._announced[uid]

    # ---- fetching (exchange/fetching.py) -----------------------------------------------------------

    async def fetch_announced(self) -> None:
        await self.fetcher.fetch_announced()

    async def fetch_by_id(self, update_id: str, holders: list[str]) -> bytes | None:
        """The bytes of ``update_id`` from this node or one of ``holders``, checked against the id only."""
        return await self.fetcher.fetch_by_id(update_id, holders)

    @property
    def fetched(self) -> int:
        return self.fetcher.fetched

    @property
    def bad_holder_fetches(self) -> int:
        return self.fetcher.bad_holder_fetches
