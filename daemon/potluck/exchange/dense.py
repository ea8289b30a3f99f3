"""The dense path's transport: potluck's own reduce-scatter and all-gather of fixed-point integers over
the direct TCP channel (exchange/bulk.py), libp2p streams where a peer cannot be reached directly.

Each participant serves, for one attempt (its 32-byte key, rounds/dense.attempt_key), named integer
arrays: ``c<k>``, its contribution's part for reducer k (reduce-scatter), then ``h<i>`` (its signed
header) and ``m<i>`` (its merged range, all-gather). A peer asks over libp2p (authenticated,
``GetDenseTicket``: the request and reply messages of ``GetBulkTicket``) for a ticket to the direct
channel and the list of arrays offered so far, each with its wire type, length and digest
(rounds/dense.digest); the request names the array it needs and the reply waits (up to WAIT_S) until
it is offered. It reads the array over one direct connection per peer and attempt, in pipelined
pieces hashed as they arrive, into a preallocated buffer (a merged range straight into the sum). So the
bytes are checked against what the sender stated over the authenticated channel, and a merged range
against the digest its reducer signed (rounds/dense.tree_digest: a Merkle root, so that one wrong value
can be proven with one leaf). A peer without a direct channel (client mode, a port that cannot be
reached) serves the same arrays over libp2p (``GetDensePart``).

Why not hivemind's all-reduce: on the 2-core box it moves ~42-65 MB/s per peer and carries the integers
as float64; this path moves int32 at ~355 MB/s per peer there, 2.5x raw TCP with the same bytes
(bench/rounds.py, bench/README.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hivemind.p2p import P2PContext, PeerID

from potluck.exchange.bulk import BulkConnection, BulkServer, Hashing, listen_ip
from potluck.exchange.chunks import chunked, received
from potluck.exchange.download import addr_ips
from potluck.rounds import dense
from potluck.swarm import traffic
from potluck.swarm.host import SwarmHost
from potluck.v1 import exchange_pb2

logger = logging.getLogger(__name__)

TICKET_HANDLER = "potluck.v1.GetDenseTicket"
PART_HANDLER = "potluck.v1.GetDensePart"
KEEP = 2  # attempts whose arrays stay served (a slow peer may still read the last one; ~1.3x the model each)
WAIT_S = 0.5  # a ticket request waits this long at most for the array it names to be offered
MAX_NAME = 64
HASH_PIECE = 1 << 20  # hashed as they arrive
MAX_HEADER_BYTES = 16 << 10
BLOB = "|u1"  # a signed header travels as bytes


class DenseUnavailable(Exception):
    """A peer did not serve an array of the attempt in time, or served bytes that do not check out."""


def _digest(blob: bytes) -> bytes:
    return hashlib.sha256(blob).digest()


class _Offered(Mapping[str, np.ndarray]):
    """What the channel serves for one attempt: the current snapshot, so arrays offered later are served
    on a connection opened earlier (the server reads only ``get`` and ``values``)."""

    def __init__(self) -> None:
        self.items: dict[str, np.ndarray] = {}
        self.metas: dict[str, exchange_pb2.TensorMeta] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self.items))

    def __len__(self) -> int:
        return len(self.items)


class DenseService:
    def __init__(self, host: SwarmHost, run_id: str) -> None:
        self._host, self._run = host, run_id
        self._offers: OrderedDict[str, _Offered] = OrderedDict()
        self.server: BulkServer | None = None
        self._changed = asyncio.Event()  # set (and replaced) at every offer
        self.direct = True  # read over direct channels where reachable (False: libp2p only, for benches)

    async def start(self) -> None:
        p2p = self._host.p2p
        await p2p.add_protobuf_handler(TICKET_HANDLER, self._serve_ticket, exchange_pb2.BulkTicketRequest)
        await p2p.add_protobuf_handler(
            PART_HANDLER, self._serve_part, exchange_pb2.TensorRequest, stream_output=True
        )
        ip = listen_ip(self._host.listen)
        if not self._host.client_mode and ip is not None:
            server = BulkServer(lambda key: self._offers.get(key))
            counters = traffic.counters_of(p2p)
            if counters is not None:  # status's traffic: the direct channel's bytes as "direct"
                server.on_sent = lambda n: counters.add(traffic.DIRECT, sent=n)
            try:
                await server.start(ip)
                self.server = server
            except OSError as e:
                logger.warning(f"no direct channel for dense rounds on {ip} ({e}): libp2p only")

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()

    def offer(self, key: bytes, arrays: Mapping[str, tuple[np.ndarray, bytes]]) -> None:
        """Serve these arrays (contiguous, little-endian; each with its :func:`digest`) of the attempt
        named ``key`` from now on."""
        offered = self._offers.setdefault(key.hex(), _Offered())
        self._offers.move_to_end(key.hex())
        while len(self._offers) > KEEP:
            self._offers.popitem(last=False)
        for name, (array, digest) in arrays.items():
            meta = exchange_pb2.TensorMeta(name=name, dtype=array.dtype.str, shape=[array.size], hash=digest)
            offered.metas = {**offered.metas, name: meta}
            offered.items = {**offered.items, name: array}
        self._changed.set()  # wakes the tickets waiting for these
        self._changed = asyncio.Event()

    async def _serve_ticket(
        self, request: exchange_pb2.BulkTicketRequest, context: P2PContext
    ) -> exchange_pb2.BulkTicket:
        # the request names the attempt (32 bytes) and, after it, the array the peer waits for: the
        # reply waits (up to WAIT_S) until it is offered, so that a peer need not ask again and again
        key, wanted = request.version[:32].hex(), request.version[32 : 32 + MAX_NAME].decode(errors="replace")
        deadline = time.monotonic() + WAIT_S
        while wanted and wanted not in getattr(self._offers.get(key), "metas", {}):
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        offered = self._offers.get(key)
        if offered is None:
            return exchange_pb2.BulkTicket()
        metas = list(offered.metas.values())
        if self.server is None or not self.server.port:
            return exchange_pb2.BulkTicket(tensors=metas)
        token = self.server.tickets.issue(context.remote_id.to_base58(), key)
        host = "" if ipaddress.ip_address(self.server.host).is_unspecified else self.server.host
        return exchange_pb2.BulkTicket(host=host, port=self.server.port, token=token, tensors=metas)

    async def _serve_part(
        self, request: exchange_pb2.TensorRequest, context: P2PContext
    ) -> AsyncIterator[exchange_pb2.UpdateChunk]:
        offered = self._offers.get(request.version.hex())
        array = offered.items.get(request.name) if offered is not None else None
        for chunk in chunked(array.tobytes() if array is not None else None):
            yield chunk

    def session(self, key: bytes, peer_id: str, addrs: Sequence[str], until: float) -> Session:
        return Session(self, key, peer_id, list(addrs), until)


class Session:
    """One attempt's arrays from one peer: tickets over libp2p, one direct connection (or libp2p)."""

    def __init__(self, service: DenseService, key: bytes, peer_id: str, addrs: list[str], until: float):
        self._service, self._key, self._addrs, self._until = service, key, addrs, until
        self.peer_id = peer_id
        self._peer = PeerID.from_base58(peer_id)
        self._conn: BulkConnection | None = None
        self._dialled = self._asked = False
        self._metas: dict[str, exchange_pb2.TensorMeta] = {}
        self._lock = threading.Lock()  # one read at a time on the connection
        self.bytes_direct = self.bytes_p2p = 0

    async def _ticket(self, wanted: str) -> exchange_pb2.BulkTicket | None:
        host = self._service._host
        try:
            if self._addrs and not self._asked:
                await host.connect(self._peer, self._addrs)
            self._asked = True
            request = exchange_pb2.BulkTicketRequest(version=self._key + wanted.encode())
            call = host.p2p.call_protobuf_handler(
                self._peer, TICKET_HANDLER, request, exchange_pb2.BulkTicket
            )
            return await asyncio.wait_for(call, max(0.1, self._until - time.time()))
        except Exception as e:  # the peer is restarting, or not there yet: ask again
            logger.debug(f"{TICKET_HANDLER} from {self.peer_id}: {type(e).__name__}: {e}")
            await asyncio.sleep(WAIT_S / 10)
            return None

    async def meta(self, name: str) -> exchange_pb2.TensorMeta:
        """The peer's statement of array ``name`` (asking until it offers it); dials the direct channel
        with the first ticket."""
        while name not in self._metas and time.time() < self._until:
            ticket = await self._ticket(name)
            if ticket is None:
                continue
            self._metas.update((m.name, m) for m in ticket.tensors)
            if not self._dialled and ticket.port and self._service.direct:
                self._dialled = True
                ips = addr_ips(self._addrs)
                ip = ticket.host if ticket.host and (not ips or ticket.host in ips) else (ips or [""])[0]
                try:
                    self._conn = await asyncio.to_thread(BulkConnection, ip, ticket.port, ticket.token)
                except OSError as e:
                    logger.info(f"no direct channel to {self.peer_id} at {ip}:{ticket.port} ({e}); libp2p")
        if name not in self._metas:
            raise DenseUnavailable(f"{self.peer_id[:16]} did not offer {name} in time")
        return self._metas[name]

    async def fetch(self, name: str, count: int, into: np.ndarray | None = None) -> tuple[np.ndarray, bytes]:
        """Array ``name`` of ``count`` integers (in a wire type of rounds/dense.NARROW; ``count = 0``: a
        signed header, ``BLOB`` of at most MAX_HEADER_BYTES) as the peer stated it, checked against the
        digest it stated (a merged range ``m<i>``: its tree digest); and that digest. Received straight
        into ``into`` where it has the stated type."""
        meta, tree = await self.meta(name), name.startswith("m")
        size = meta.shape[0] if len(meta.shape) == 1 else -1
        blob = count == 0
        try:
            if blob and not (meta.dtype == BLOB and 0 < size <= MAX_HEADER_BYTES):
                raise dense.BadRange(f"a header of {size} bytes of {meta.dtype}")
            if not blob and (dense.wire_dtype(meta.dtype) is None or size != count):
                raise dense.BadRange(f"{size} values, not {count}")
            if len(meta.hash) != 32:
                raise dense.BadRange("no digest")
        except dense.BadRange as e:
            raise DenseUnavailable(f"{self.peer_id[:16]} stated {name}: {e}") from None
        fits = into is not None and into.dtype.str == meta.dtype and into.size == size
        array = into if fits else np.empty(size, dtype=np.dtype(meta.dtype))
        assert array is not None
        view = memoryview(array.view(np.uint8))
        hasher = self._hasher(meta.dtype, tree)
        if self._conn is not None:
            try:
                await asyncio.to_thread(self._read, name, view, hasher)
                self.bytes_direct += view.nbytes
            except OSError as e:  # the channel broke: this and the rest over libp2p
                logger.info(f"direct channel to {self.peer_id} failed ({type(e).__name__}: {e}); libp2p")
                self.close()
                hasher = self._hasher(meta.dtype, tree)
        if self._conn is None:
            await self._fetch_p2p(name, view, hasher)
            self.bytes_p2p += view.nbytes
        if hasher.digest() != meta.hash:
            raise DenseUnavailable(f"{name} from {self.peer_id[:16]} does not match its stated digest")
        return array, meta.hash

    @staticmethod
    def _hasher(dtype: str, tree: bool) -> Any:
        return hashlib.sha256() if dtype == BLOB else (dense.TreeHasher if tree else dense.RangeHasher)(dtype)

    def _read(self, name: str, view: memoryview, hasher: Hashing) -> None:
        with self._lock:
            assert self._conn is not None
            self._conn.read_hashed(name, view, hasher, HASH_PIECE)

    async def _fetch_p2p(self, name: str, view: memoryview, hasher: Hashing) -> None:
        request = exchange_pb2.TensorRequest(version=self._key, name=name)
        try:
            stream = await self._service._host.p2p.iterate_protobuf_handler(
                self._peer, PART_HANDLER, request, exchange_pb2.UpdateChunk
            )
            data = await asyncio.wait_for(received(stream, view.nbytes), max(0.1, self._until - time.time()))
        except Exception as e:
            raise DenseUnavailable(f"{name} from {self.peer_id[:16]}: {type(e).__name__}: {e}") from None
        if len(data) != view.nbytes:
            raise DenseUnavailable(f"{name} from {self.peer_id[:16]}: {len(data)} bytes, not {view.nbytes}")
        view[:] = data
        hasher.update(view)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _encoded(values: np.ndarray, tree: bool = False) -> tuple[np.ndarray, bytes]:
    array = dense.encode(values)
    return array, dense.tree_digest(array) if tree else dense.digest(array)


@dataclass
class Prepared:
    """What a participant readies before the exchange, as the all-reduce packs its vector before its
    scheduled time: its parts offered, the accumulator of its range, the sum's buffer (pages touched)."""

    acc: np.ndarray  # int64, this participant's range of its own contribution, the parts added into it
    out: np.ndarray  # int32, the whole sum's buffer


async def prepare(
    service: DenseService, key: bytes, me: int, bounds: Sequence[tuple[int, int]], q: np.ndarray
) -> Prepared:
    """Encode and offer this participant's part of every other range (each as soon as it is encoded:
    its reducer can start on it), and make the buffers of its reduce and of the sum."""

    async def offer_part(k: int) -> None:
        service.offer(key, {f"c{k}": await asyncio.to_thread(_encoded, q[slice(*bounds[k])])})

    def buffers() -> Prepared:
        out = np.empty(q.size, dtype=np.int32)
        out.fill(0)  # its pages now, not inside the receives
        return Prepared(q[slice(*bounds[me])].copy(), out)

    others = [k for k in range(len(bounds)) if k != me]
    *_, ready = await asyncio.gather(*(offer_part(k) for k in others), asyncio.to_thread(buffers))
    return ready


async def reduce_scatter(
    service: DenseService,
    key: bytes,
    me: int,
    peers: Sequence[tuple[str, list[str]] | None],
    bounds: Sequence[tuple[int, int]],
    q: np.ndarray,
    sign: Callable[[int, int, bytes], bytes],
    check_header: Callable[[int, bytes, bytes, np.ndarray], None],
    check_part: Callable[[int, np.ndarray], None] | None,
    until: float,
    phases: dict[str, float] | None = None,
    prepared: Prepared | None = None,
    finish: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """The exact sum (int32 where every range fits, else int64) of every participant's ``q`` (this
    one's: ``q``), participant ``me`` reducing ``bounds[me]``. ``peers[j]`` is participant j's (peer id,
    addresses), None for ``me``. ``sign(lo, hi, digest)`` makes this node's signed header of its merged
    range; ``check_header(j, header, digest, values)`` raises unless reducer j's header is right for the
    attempt and names that digest (the tree digest of ``values``, its range as it served it);
    ``check_part(j, part)`` (optional) audits participant j's contribution to our range. ``phases``
    (optional) gets the seconds each phase took. ``prepared``: :func:`prepare`'s result, when the
    caller readied it before (else it is readied here, while this node's own part is fetched).
    ``finish`` (tests: a lying reducer) replaces this node's merged range before it is signed.
    Raises DenseUnavailable."""
    clock = [time.perf_counter()]

    def mark(phase: str) -> None:
        if phases is not None:
            now = time.perf_counter()
            phases[phase] = now - clock[0]
            clock[0] = now

    lo, hi = bounds[me]
    others = [j for j in range(len(bounds)) if j != me]
    sessions = {j: service.session(key, *peers[j], until) for j in others}  # type: ignore[misc]
    pending = prepared or asyncio.ensure_future(prepare(service, key, me, bounds, q))
    adding = threading.Lock()
    try:

        async def reduce(j: int) -> None:
            part, _ = await sessions[j].fetch(f"c{me}", hi - lo)
            if check_part is not None:
                await asyncio.to_thread(check_part, j, part)

            ready = prepared or await pending  # type: ignore[misc]

            def add() -> None:
                with adding:
                    np.add(ready.acc, part, out=ready.acc)

            await asyncio.to_thread(add)

        await asyncio.gather(*(reduce(j) for j in others))
        ready: Prepared = prepared or await pending  # type: ignore[misc]
        mark("reduce")
        merged, digest = await asyncio.to_thread(_encoded, finish(ready.acc) if finish else ready.acc, True)
        signed = sign(lo, hi, digest)
        service.offer(
            key,
            {f"h{me}": (np.frombuffer(signed, dtype=np.uint8), _digest(signed)), f"m{me}": (merged, digest)},
        )
        # the sum in int32 where every range fits (the usual case), received in place: no copy
        out = ready.out if merged.dtype.itemsize <= 4 else np.empty(q.size, dtype=np.int64)
        out[lo:hi] = merged
        wide: dict[int, np.ndarray] = {}
        mark("merged")

        async def gather(j: int) -> None:
            header, _ = await sessions[j].fetch(f"h{j}", 0)
            begin, end = bounds[j]
            values, digest = await sessions[j].fetch(f"m{j}", end - begin, out[begin:end])
            check_header(j, header.tobytes(), digest, values)
            if values.dtype.itemsize > out.dtype.itemsize:
                wide[j] = values
            elif values.base is not out:
                out[begin:end] = values

        await asyncio.gather(*(gather(j) for j in others))
        if wide:  # a range needed int64: the whole sum in int64
            out = out.astype(np.int64)
            for j, values in wide.items():
                out[slice(*bounds[j])] = values
        mark("gather")
    finally:
        if not isinstance(pending, Prepared):
            pending.cancel()
        for s in sessions.values():
            s.close()
    return out
