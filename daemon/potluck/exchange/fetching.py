"""Fetching everyone else's updates: read the round's announcements (as they are pushed to us, and
from the DHT every POLL_INTERVAL_S), download each new update from a holder named there, and hand its
bytes to the exchange to validate and hold.

Bytes that do not hash to the announced id cost the holder (counted, avoided for AVOID_HOLDER_S);
an update the validator rejects is remembered by id (for good, or for RETRY_S where the reason
depends on when it is seen); what a banned author, or one past its rate limit, announces is not
fetched (counted once per id).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

from potluck.exchange.announcements import Announcement, BadAnnouncement, updates_key
from potluck.exchange.chunks import BadStream, NotHeld, download_from
from potluck.identity import NodeIdentity
from potluck.swarm.bulletin import Bulletin
from potluck.swarm.host import SwarmHost
from potluck.updates.reasons import Reason, UpdateRejected
from potluck.updates.validation import UpdateValidator
from potluck.v1 import exchange_pb2
from potluck.wire import WireError, bounded_unpackb

logger = logging.getLogger(__name__)

HANDLER = "potluck.v1.GetUpdate"
# DHT reads (pushed announcements, swarm/bulletin.py, are read as they come): this often, and twice
# as seldom after each read that found nothing new, up to IDLE_POLL_S (a new round starts over)
POLL_INTERVAL_S, IDLE_POLL_S = 2.0, 8.0
# an update announced to us by a push is fetched only this long after: its bytes are usually being
# pushed to us meanwhile ("ready" pacing), and a fetch of what lands anyway is bytes for nothing
PUSH_GRACE_S = 0.5
FETCH_TIMEOUT_S = 10.0  # plus the update's size at MIN_FETCH_BYTES_PER_S: a dead holder costs seconds
MIN_FETCH_BYTES_PER_S = 1 << 20
AVOID_HOLDER_S = 300.0
# Reasons that depend on when the update is seen (the round moves on, a base arrives): try again later.
RETRYABLE = frozenset({Reason.FUTURE_ROUND, Reason.UNKNOWN_BASE})
RETRY_S = 10.0


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


class Fetcher:
    def __init__(
        self,
        host: SwarmHost,
        bulletin: Bulletin,
        identity: NodeIdentity,
        run: str,
        validator: UpdateValidator,
        addresses_of: Callable[[str], list[str]],
        *,
        have: Callable[[str], bool],
        accept: Callable[[bytes, str], Awaitable[object]],
        read_local: Callable[[str], bytes | None],
        poll_interval_s: float = POLL_INTERVAL_S,
    ):
        self._host, self._identity, self._run, self._validator = host, identity, run, validator
        self._bulletin = bulletin
        self._announced = asyncio.Event()  # an announcement was pushed to us
        bulletin.on_post(self._on_post)
        self._addresses_of = addresses_of  # peer id -> multiaddrs, from the peer records
        self._have, self._accept, self._read_local = have, accept, read_local
        self._poll_interval_s = poll_interval_s
        self.holders: dict[str, set[str]] = {}  # update id -> peer ids known to hold it
        self._rejected: dict[str, Reason] = {}  # update ids that failed validation for good
        self._avoid: dict[str, float] = {}  # peer id -> until when
        self._inflight: set[str] = set()
        self._retry_after: dict[str, float] = {}  # update id -> when to try a retryable rejection again
        self._skipped: set[str] = set()  # announced ids not fetched (banned/rate-limited author), counted
        self._fetches: set[asyncio.Task] = set()
        self._first_seen: dict[str, float] = {}  # update id -> when an announcement first named it
        self._poll_every = poll_interval_s
        self.fetched = 0
        self.bad_holder_fetches = 0

    async def stop(self) -> None:
        tasks = list(self._fetches)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def new_round(self) -> None:
        """The validator moved on: announcements of older rounds are no longer read, and what was too
        early or on an unknown base may be fine now."""
        self._skipped.clear()
        self._retry_after.clear()
        self._first_seen.clear()
        self._poll_every = self._poll_interval_s
        self._announced.set()  # read the new round's announcements now

    def rounds_of_interest(self) -> range:
        ctx = self._validator.context
        return range(max(0, ctx.round - ctx.rounds_behind), ctx.round + ctx.rounds_ahead + 1)

    def _on_post(self, key: str) -> None:
        if key.startswith(updates_key(self._run, 0)[:-1]):
            self._announced.set()

    async def fetch_forever(self) -> None:
        read_dht_at = 0.0
        while True:
            await self._host.bootstrap.connected_event.wait()
            network = time.monotonic() >= read_dht_at
            if network:
                read_dht_at = time.monotonic() + self._poll_every
                self._poll_every = min(2 * self._poll_every, max(IDLE_POLL_S, self._poll_interval_s))
            self._announced.clear()
            wake_at = read_dht_at
            try:
                wake_at = min(wake_at, await self.fetch_announced(network))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.debug(f"looking for updates failed: {type(e).__name__}: {e}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._announced.wait(), max(0.0, wake_at - time.monotonic()))

    async def fetch_announced(self, network: bool = True) -> float:
        """Fetch what the announcements name and we lack; ``network``: read the DHT, not only the pushes
        (whose news waits PUSH_GRACE_S). Returns when a deferred fetch is due (monotonic seconds)."""
        due = float("inf")
        if not self._validator.context.known_bases:  # no model to check updates against: don't fetch
            return due
        wanted: list[Announcement] = []
        for round_ in self.rounds_of_interest():
            found = await self._bulletin.get(updates_key(self._run, round_), network=network)
            for item in found.values():
                try:
                    announcement = Announcement.verify(item.value)
                except BadAnnouncement as e:
                    logger.debug(f"ignoring announcement: {e}")
                    continue
                if announcement.round != round_:
                    continue
                self.holders.setdefault(announcement.update_id, set()).update(announcement.holders)
                uid = announcement.update_id
                if self._have(uid) or uid in self._rejected or uid in self._inflight:
                    continue
                if self.skip(announcement):
                    continue
                if self._retry_after.get(uid, 0.0) > time.monotonic():
                    continue
                if uid not in self._first_seen:  # news: poll the DHT often again
                    self._poll_every = self._poll_interval_s
                first = self._first_seen.setdefault(uid, time.monotonic())
                if not network and first + PUSH_GRACE_S > time.monotonic():
                    due = min(due, first + PUSH_GRACE_S)
                    continue
                wanted.append(announcement)
        for announcement in wanted:
            self._inflight.add(announcement.update_id)
            task = asyncio.create_task(self._fetch(announcement), name=f"fetch-{announcement.update_id[:12]}")
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)
        return due

    def skip(self, announcement: Announcement) -> bool:
        """Don't fetch what a banned author, or one past its rate limit, announces (the author named in
        an announcement is a claim: nothing is remembered for good, the next poll looks again)."""
        if self._validator.is_banned(announcement.author):
            reason = Reason.BANNED
        elif self._validator.budget_spent(announcement.author, announcement.round):
            reason = Reason.RATE_LIMITED
        else:
            return False
        if announcement.update_id not in self._skipped:
            self._skipped.add(announcement.update_id)
            self._validator.counters[reason.value] += 1
        return True

    async def fetch_by_id(self, update_id: str, holders: list[str]) -> bytes | None:
        """The bytes of ``update_id`` from this node or one of ``holders`` (peer ids), checked against the
        id (a hash) and nothing else; None if nobody served them."""
        local = await asyncio.to_thread(self._read_local, update_id)
        if local is not None:
            return local
        limit = self._validator.context.limits.max_bytes
        for holder in holders:
            if holder == self._identity.peer_id or self._avoid.get(holder, 0) > time.monotonic():
                continue
            data = await self._download_checked(holder, update_id, limit)
            if data is not None:
                return data
        return None

    async def _download_checked(self, holder: str, update_id: str, limit: int) -> bytes | None:
        """The bytes ``holder`` serves for ``update_id`` if they hash to it; else None (a holder that
        served other bytes is counted and avoided)."""
        try:
            timeout = FETCH_TIMEOUT_S + limit / MIN_FETCH_BYTES_PER_S
            data = await asyncio.wait_for(self.download(holder, update_id, limit), timeout)
        except Exception as e:  # unreachable, slow or misbehaving holder: try the next one
            logger.debug(f"fetching {update_id[:12]} from {holder} failed: {type(e).__name__}: {e}")
            return None
        if _id_or_none(data, limit) == update_id:
            return data
        self.bad_holder_fetches += 1
        self._avoid[holder] = time.monotonic() + AVOID_HOLDER_S
        logger.warning(f"holder {holder} served bytes that are not update {update_id[:12]}; avoiding it")
        return None

    async def _fetch(self, announcement: Announcement) -> None:
        uid = announcement.update_id
        try:
            limit = min(announcement.size, self._validator.context.limits.max_bytes)
            for holder in self._holder_order(uid):
                data = await self._download_checked(holder, uid, limit)
                if data is None:
                    continue
                try:
                    await self._accept(data, "fetched")
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
            for h in self.holders.get(update_id, ())
            if h != self._identity.peer_id and self._avoid.get(h, 0) < now
        ]
        random.shuffle(candidates)
        return sorted(candidates, key=lambda h: not self._addresses_of(h))

    async def download(self, holder: str, update_id: str, limit: int) -> bytes:
        """The bytes ``holder`` serves for ``update_id`` over GetUpdate, unchecked (at most ``limit``)."""
        request = exchange_pb2.UpdateRequest(update_id=bytes.fromhex(update_id))
        try:
            addrs = self._addresses_of(holder)
            return await download_from(self._host, holder, addrs, HANDLER, request, limit)
        except (NotHeld, BadStream) as e:
            raise FetchFailed(f"holder {holder[:16]}: {e}") from None
