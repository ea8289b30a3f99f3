"""Small signed records pushed straight to the run's peers, beside their DHT copy.

The round protocol's records (announcements, declarations, entries, commit signatures) live in the
DHT, where any node reads them whenever it looks. Looking costs a DHT traversal, and looking often
enough for a round of a second or two costs more bytes than the round's updates weigh. So a node
that stores such a record also posts it to the run's peers over one libp2p call each
(``potluck.v1.Post``); a receiver keeps it in a bounded cache and wakes whoever waits on that key.

Readers see the union of the DHT's values and the cache (:meth:`Bulletin.get`), or the cache alone
between two DHT reads (``network=False``). A pushed record is checked by its reader exactly as one
read from the DHT (signature, run, round): the push is only faster, never more trusted. A record a
push lost is still in the DHT, which readers consult at the edges of their windows; so a full
cache (a peer flooding us) slows a reader down to the DHT's pace and breaks nothing.

A DHT store costs far more than a push (hivemind looks the key's nearest nodes up first: measured
by bench/pacing.py on 5 local nodes, a round of "ready" pacing moved 2.0 MB on the wire with the
round's records stored at once, 0.85 MB without). So a record that only matters while its round
is open may be stored :attr:`Bulletin.store_after` seconds later, and only if it still matters
then: a round that is over by then costs its pushes alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from hivemind.p2p import P2PContext, PeerID
from hivemind.utils import ValueWithExpiration

from potluck.swarm.host import SwarmHost
from potluck.swarm.traffic import POST_HANDLER
from potluck.v1 import exchange_pb2

logger = logging.getLogger(__name__)

POST_TIMEOUT_S = 2.0
MAX_VALUE_BYTES = 14 << 10  # hivemind's DHT hazard: no record we post is larger
MAX_KEYS = 512
MAX_SUBKEYS = 128  # per key: more than a round has participants or updates
MAX_TTL_S = 2 * 24 * 3600.0


def _ALWAYS() -> bool:
    return True


class Bulletin:
    def __init__(self, host: SwarmHost, run: str, peer_ids: Callable[[], Iterable[str]]):
        """``peer_ids``: the base58 peer ids a post goes to (the run's live peers, from the records)."""
        self._host, self._prefix, self._peer_ids = host, f"potluck/{run}/", peer_ids
        self._cache: OrderedDict[str, dict[Any, ValueWithExpiration]] = OrderedDict()
        self._changed: dict[str, asyncio.Event] = {}
        self._posts: dict[str, int] = {}  # key -> records kept under it so far (a reader's "since")
        self._sends: set[asyncio.Task] = set()
        self._listeners: list[Callable[[str], None]] = []
        self._claims: dict[str, Callable[[bytes, bytes, float], bool]] = {}
        self.received = 0
        self.dropped = 0  # pushes refused: wrong run, too large, expired, or a full cache
        self.store_after = 0.0  # a record with a relevance test is stored this much later (see above)

    async def start(self) -> None:
        await self._host.p2p.add_protobuf_handler(POST_HANDLER, self._receive, exchange_pb2.Post)

    async def stop(self) -> None:
        for task in list(self._sends):
            task.cancel()
        await asyncio.gather(*self._sends, return_exceptions=True)

    def on_post(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(key)`` on the event loop whenever a record arrives under a key."""
        self._listeners.append(listener)

    def claim(self, key: str, take: Callable[[bytes, bytes, float], bool]) -> None:
        """Posts under ``key`` go to ``take(subkey, value, expiration)``, which checks and keeps them
        itself (True) or refuses them (False), instead of to the cache (the peer records: membership)."""
        self._claims[key] = take

    # ---- posting ---------------------------------------------------------------------------------

    def post(
        self, key: str, subkey: bytes, value: bytes, expiration: float, *,
        to: Iterable[str] | None = None, store: bool | Callable[[], bool] = True,
    ) -> None:  # fmt: skip
        """Push the record to ``to`` (default: every live peer of the run) and store it in the DHT: at
        once (``store`` True), never (False: a notice of a record the DHT already holds), or, given a
        test of whether the record still matters, :attr:`store_after` seconds later if it does.
        Nothing is awaited: a slow or dead peer, or a DHT waiting on one, delays nobody (a frozen peer
        held a round's entries up for 4 s in tests/engine/test_failures.py while stores were awaited)."""
        if key not in self._claims:
            self._keep(key, subkey, value, expiration)  # we read our own records like anyone's
        message = exchange_pb2.Post(key=key, subkey=subkey, value=value, expiration=expiration)
        me = self._host.peer_id
        for peer_id in set(self._peer_ids() if to is None else to) - {me}:
            self._spawn(self._send(peer_id, message), f"post-{peer_id[-8:]}")
        if store is not False:
            matters = store if callable(store) else _ALWAYS
            self._spawn(self._store_later(key, subkey, value, expiration, matters), "store")

    def _spawn(self, coroutine: Awaitable[None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _store_later(
        self, key: str, subkey: bytes, value: bytes, expiration: float, matters: Callable[[], bool]
    ) -> None:
        if self.store_after > 0 and matters is not _ALWAYS:
            await asyncio.sleep(self.store_after)
        if matters():
            with contextlib.suppress(Exception):  # the pushes went out; the DHT copy is the fallback
                await self._host.store(key, subkey, value, expiration)

    async def _send(self, peer_id: str, message: exchange_pb2.Post) -> None:
        try:
            peer = PeerID.from_base58(peer_id)
            await asyncio.wait_for(
                self._host.p2p.call_protobuf_handler(peer, POST_HANDLER, message, exchange_pb2.PostAck),
                POST_TIMEOUT_S,
            )
        except Exception as e:  # the DHT copy is the fallback: a failed push only costs latency
            logger.debug(f"posting to {peer_id} failed: {type(e).__name__}: {e}")

    # ---- receiving -------------------------------------------------------------------------------

    async def _receive(self, message: exchange_pb2.Post, context: P2PContext) -> exchange_pb2.PostAck:
        if self._keep(message.key, message.subkey, message.value, message.expiration):
            self.received += 1
        else:
            self.dropped += 1
        return exchange_pb2.PostAck()

    def _keep(self, key: str, subkey: bytes, value: bytes, expiration: float) -> bool:
        now = time.time()
        if (
            not key.startswith(self._prefix)
            or len(value) > MAX_VALUE_BYTES
            or not now < expiration <= now + MAX_TTL_S
        ):
            return False
        take = self._claims.get(key)
        if take is not None:
            try:
                return take(subkey, value, expiration)
            except Exception as e:  # a peer's bytes must not break the handler
                logger.warning(f"a record posted under {key} failed: {type(e).__name__}: {e}")
                return False
        values = self._cache.get(key)
        if values is None:
            if len(self._cache) >= MAX_KEYS:
                old, _ = self._cache.popitem(last=False)  # the least recently posted key: an old round's
                self._posts.pop(old, None)
            values = self._cache[key] = {}
        self._cache.move_to_end(key)
        if subkey not in values and len(values) >= MAX_SUBKEYS:
            self._expire(values, now)
            if len(values) >= MAX_SUBKEYS:
                return False
        values[subkey] = ValueWithExpiration(value, expiration)
        self._posts[key] = self._posts.get(key, 0) + 1
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()
        for listener in self._listeners:
            listener(key)
        return True

    @staticmethod
    def _expire(values: dict[Any, ValueWithExpiration], now: float) -> None:
        for subkey in [s for s, item in values.items() if item.expiration_time <= now]:
            del values[subkey]

    # ---- reading ---------------------------------------------------------------------------------

    def cached(self, key: str) -> dict[Any, ValueWithExpiration]:
        """What was pushed (or posted by us) under ``key`` and has not expired: no network."""
        values = self._cache.get(key) or {}
        self._expire(values, time.time())
        return dict(values)

    async def get(self, key: str, *, network: bool = True) -> dict[Any, ValueWithExpiration]:
        """subkey -> value under ``key``: the DHT's (unless ``network`` is False) joined with what was
        pushed to us. A DHT that cannot answer leaves the pushed values."""
        found: dict[Any, ValueWithExpiration] = {}
        if network:
            with contextlib.suppress(Exception):
                found = dict(await self._host.get(key))
        values = self._cache.get(key)
        if values:
            self._expire(values, time.time())
            for subkey, item in values.items():
                found.setdefault(subkey, item)
        return found

    def posts(self, key: str) -> int:
        """How many records were kept under ``key`` so far: pass it to :meth:`wait` as ``since``."""
        return self._posts.get(key, 0)

    async def wait(self, key: str, timeout: float, since: int | None = None) -> bool:
        """Until a record is posted under ``key`` after the ``since``-th (default: from now on) (True),
        or ``timeout`` seconds pass (False)."""
        if since is not None and self.posts(key) > since:
            return True
        event = self._changed.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), max(0.0, timeout))
            return True
        except TimeoutError:
            return False
