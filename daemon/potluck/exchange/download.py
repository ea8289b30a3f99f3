"""A version's download from several holders: the two passes that exchange/state.py's docstring tells.

``Download`` keeps one download's bookkeeping (the holders still trusted, the tensors done, the tensors
whose pieces did not hash right) and fetches over the direct bulk channel (exchange/bulk.py) or over
libp2p streams (``GetTensor``, whole or a range; ``GetBulkTicket``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from hivemind.p2p import PeerID

from potluck.exchange.bulk import BulkConnection, Piece, plan_pieces, tensor_view
from potluck.hashing import tensor_hash
from potluck.swarm import traffic
from potluck.swarm.host import SwarmHost
from potluck.v1 import exchange_pb2

logger = logging.getLogger(__name__)

TENSOR_HANDLER = "potluck.v1.GetTensor"
TICKET_HANDLER = "potluck.v1.GetBulkTicket"

TENSOR_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 10.0
MAX_TENSOR_BYTES = 16 << 30
_DTYPES = {"<f4", "<f8", "<f2", "<i8", "<i4", "<i2", "|i1", "|u1", "|b1", "<u2", "<u4", "<u8"}


class SyncFailed(Exception):
    pass


@dataclass
class SyncStats:
    tensors_downloaded: int = 0
    tensors_reused: int = 0
    bad_tensors: int = 0  # tensors whose bytes did not match the commit: their holder was dropped
    bytes_downloaded: int = 0
    bytes_direct: int = 0  # of bytes_downloaded, those that came over the direct bulk channel


@dataclass
class SyncProgress:
    """The download under way, for status (an empty ``version``: none). ``bytes`` is what came in for it
    so far; ``target_bytes`` is what it needs, counted as the holders' tensor lists (pass 1) or a
    tensor's first chunk (pass 2) name sizes, so it can grow while a download runs; a tensor fetched
    again after a holder served wrong bytes makes ``bytes`` pass it."""

    version: str = ""
    started: float = 0.0  # unix time
    bytes: int = 0
    target_bytes: int = 0
    sized: dict[str, int] = field(default_factory=dict)  # tensor -> bytes, as far as known

    def size(self, name: str, nbytes: int) -> None:
        if name not in self.sized:
            self.sized[name] = nbytes
            self.target_bytes += nbytes


def addr_ips(addrs: Sequence[str]) -> list[str]:
    """The IPs a holder is dialled on directly (a relayed address names the relay's IP, not its own)."""
    return [
        a.split("/")[2] for a in addrs if a.split("/")[1:2] in (["ip4"], ["ip6"]) and "p2p-circuit" not in a
    ]


def _nbytes(dtype: str, shape: Sequence[int]) -> int | None:
    """The byte size of a declared tensor, or None if its header is not one we accept."""
    if dtype not in _DTYPES or len(shape) > 8:
        return None
    size = np.dtype(dtype).itemsize * math.prod(shape)
    return size if size <= MAX_TENSOR_BYTES else None


class Download:
    """One download's bookkeeping: the holders still trusted, the tensors done, and the suspects."""

    def __init__(
        self,
        host: SwarmHost,
        stats: SyncStats,
        version: str,
        expected: Mapping[str, str],
        holders: Sequence[tuple[str, list[str]]],
        state: dict[str, np.ndarray],
        direct: bool = True,
        progress: SyncProgress | None = None,
    ):
        self.direct = direct
        self.progress = progress if progress is not None else SyncProgress(version)
        self.host, self.stats, self.version, self.expected = host, stats, version, expected
        self.holders, self.state = holders, state
        self.live = {peer_id for peer_id, _ in holders}
        self.peers = {peer_id: PeerID.from_base58(peer_id) for peer_id, _ in holders}
        # a tensor whose pieces did not hash right: its bytes, who served which piece, who sent the meta
        self.suspects: dict[str, tuple[np.ndarray, list[tuple[Piece, str]], str]] = {}

    def _received(self, nbytes: int, direct: bool = False) -> None:
        self.stats.bytes_downloaded += nbytes
        self.progress.bytes += nbytes
        if direct:
            self.stats.bytes_direct += nbytes
            if (counters := traffic.counters_of(self.host.p2p)) is not None:
                counters.add(traffic.DIRECT, received=nbytes)

    async def _connect(self, peer_id: str, addrs: list[str]) -> bool:
        if addrs:
            try:
                await self.host.connect(self.peers[peer_id], addrs)
            except Exception:
                self.live.discard(peer_id)
                return False
        return True

    async def pieces(self, todo: list[str]) -> None:
        async def ask(peer_id: str, addrs: list[str]) -> exchange_pb2.BulkTicket | None:
            if not await self._connect(peer_id, addrs):
                return None
            return await self._ticket(self.peers[peer_id], self.version)

        tickets = await asyncio.gather(*(ask(p, a) for p, a in self.holders))
        serving = [
            (p, a, t) for (p, a), t in zip(self.holders, tickets, strict=True) if t is not None and t.tensors
        ]
        meta: dict[str, tuple[str, tuple[int, ...], str]] = {}  # name -> dtype, shape, from whom
        for peer_id, _, ticket in serving:
            for m in ticket.tensors:
                if m.name in self.expected and m.name not in meta and _nbytes(m.dtype, m.shape):
                    meta[m.name] = (m.dtype, tuple(m.shape), peer_id)
        sizes = {name: _nbytes(*meta[name][:2]) or 0 for name in todo if name in meta}
        for name, size in sizes.items():
            self.progress.size(name, size)
        if not serving or not sizes:
            return
        buffers = {name: np.empty(size, dtype=np.uint8) for name, size in sizes.items()}
        plan = plan_pieces(sizes)
        remaining = Counter(piece.name for piece in plan)
        queue: asyncio.Queue[Piece] = asyncio.Queue()
        for piece in plan:
            queue.put_nowait(piece)
        sources: dict[str, list[tuple[Piece, str]]] = {name: [] for name in sizes}
        checks: list[asyncio.Task] = []
        conns: dict[str, BulkConnection] = {}

        async def check(name: str) -> None:
            dtype, shape, meta_from = meta[name]
            array = buffers.pop(name).view(np.dtype(dtype)).reshape(shape)
            if await asyncio.to_thread(tensor_hash, array) == self.expected[name]:
                self.state[name] = array
                self.stats.tensors_downloaded += 1
            else:
                self.suspects[name] = (array, sources[name], meta_from)

        async def worker(peer_id: str, addrs: list[str], ticket: exchange_pb2.BulkTicket) -> None:
            while peer_id in self.live:
                try:
                    piece = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                view = memoryview(buffers[piece.name])[piece.start : piece.end]
                conn = conns.get(peer_id)
                try:
                    if conn is not None:
                        await asyncio.to_thread(conn.read_into, piece.name, piece.start, view)
                        self._received(view.nbytes, direct=True)
                    elif view.nbytes:
                        await asyncio.wait_for(
                            self._fetch_range(
                                self.peers[peer_id], self.version, piece.name, piece.start, view
                            ),
                            TENSOR_TIMEOUT_S,
                        )
                except Exception as e:
                    queue.put_nowait(piece)
                    if conn is not None:  # the direct channel broke: go on over libp2p
                        logger.info(f"direct channel to {peer_id} failed ({type(e).__name__}: {e}); libp2p")
                        conns.pop(peer_id).close()
                        continue
                    logger.info(f"holder {peer_id} failed to serve {piece.name}: {type(e).__name__}: {e}")
                    self.live.discard(peer_id)
                    return
                sources[piece.name].append((piece, peer_id))
                remaining[piece.name] -= 1
                if remaining[piece.name] == 0:
                    checks.append(asyncio.create_task(check(piece.name)))

        async def dial(peer_id: str, addrs: list[str], ticket: exchange_pb2.BulkTicket) -> None:
            ips = addr_ips(addrs)
            host = ticket.host if ticket.host and (not ips or ticket.host in ips) else (ips or [""])[0]
            if not ticket.port or not host or not self.direct:
                return
            try:
                conns[peer_id] = await asyncio.to_thread(BulkConnection, host, ticket.port, ticket.token)
            except OSError as e:
                logger.info(f"no direct channel to {peer_id} at {host}:{ticket.port} ({e}); libp2p")

        try:
            await asyncio.gather(*(dial(*x) for x in serving))
            while not queue.empty() and any(p in self.live for p, _, _ in serving):
                await asyncio.gather(*(worker(*x) for x in serving if x[0] in self.live))
            await asyncio.gather(*checks)
        finally:
            for conn in conns.values():
                conn.close()

    async def whole(self, names: list[str]) -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for name in names:
            queue.put_nowait(name)

        async def worker(peer_id: str) -> None:
            while peer_id in self.live:
                try:
                    name = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    array = await asyncio.wait_for(
                        self._fetch_tensor(self.peers[peer_id], self.version, name), TENSOR_TIMEOUT_S
                    )
                except Exception as e:
                    logger.info(f"holder {peer_id} failed to serve {name}: {type(e).__name__}: {e}")
                    self.live.discard(peer_id)
                    queue.put_nowait(name)
                    return
                if await asyncio.to_thread(tensor_hash, array) != self.expected[name]:
                    self._caught(peer_id, name)
                    queue.put_nowait(name)
                    return
                self.state[name] = array
                self.stats.tensors_downloaded += 1
                if name in self.suspects:
                    self._blame(name, array)

        while not queue.empty():
            if not self.live:
                raise SyncFailed(f"every holder of {self.version[:12]} failed or lied")
            await asyncio.gather(*(worker(p) for p, _ in self.holders if p in self.live))

    async def _ticket(self, peer: PeerID, version: str) -> exchange_pb2.BulkTicket | None:
        """The holder's ticket, or None if it does not speak GetBulkTicket (pass 2 only)."""
        try:
            return await asyncio.wait_for(
                self.host.p2p.call_protobuf_handler(
                    peer,
                    TICKET_HANDLER,
                    exchange_pb2.BulkTicketRequest(version=bytes.fromhex(version)),
                    exchange_pb2.BulkTicket,
                ),
                CALL_TIMEOUT_S,
            )
        except Exception as e:
            logger.debug(f"no bulk ticket from {peer}: {type(e).__name__}: {e}")
            return None

    async def _fetch_range(
        self, peer: PeerID, version: str, name: str, offset: int, view: memoryview
    ) -> None:
        """Bytes [offset, offset + len(view)) of tensor ``name`` over libp2p, into ``view``."""
        request = exchange_pb2.TensorRequest(
            version=bytes.fromhex(version), name=name, offset=offset, length=view.nbytes
        )
        stream = await self.host.p2p.iterate_protobuf_handler(
            peer, TENSOR_HANDLER, request, exchange_pb2.TensorChunk
        )
        got, started = 0, False
        async for chunk in stream:
            if not started and chunk.total_size == 0:
                raise SyncFailed("holder does not have it")
            started = True
            if got + len(chunk.data) > view.nbytes:
                raise SyncFailed("holder sent more than asked")
            view[got : got + len(chunk.data)] = chunk.data
            got += len(chunk.data)
        if got != view.nbytes:
            raise SyncFailed("truncated range")
        self._received(got)

    async def _fetch_tensor(self, peer: PeerID, version: str, name: str) -> np.ndarray:
        request = exchange_pb2.TensorRequest(version=bytes.fromhex(version), name=name)
        stream = await self.host.p2p.iterate_protobuf_handler(
            peer, TENSOR_HANDLER, request, exchange_pb2.TensorChunk
        )
        buffer, header = bytearray(), None
        async for chunk in stream:
            if header is None:
                if chunk.total_size == 0:
                    raise SyncFailed("holder does not have it")
                if _nbytes(chunk.dtype, chunk.shape) != chunk.total_size:
                    raise SyncFailed(f"bad tensor header {chunk.dtype!r} {list(chunk.shape)}")
                header = chunk
                self.progress.size(name, chunk.total_size)
            buffer += chunk.data
            if len(buffer) > header.total_size:
                raise SyncFailed("holder sent more than it declared")
        if header is None or len(buffer) != header.total_size:
            raise SyncFailed("truncated tensor")
        self._received(len(buffer))
        return np.frombuffer(bytes(buffer), dtype=np.dtype(header.dtype)).reshape(tuple(header.shape)).copy()

    def _blame(self, name: str, good: np.ndarray) -> None:
        """Catch the holders whose pieces of ``name`` differ from its true bytes ``good``."""
        bad, pieces, meta_from = self.suspects.pop(name)
        truth, got = tensor_view(good), tensor_view(bad)
        if truth.nbytes != got.nbytes or bad.dtype != good.dtype or bad.shape != good.shape:
            liars = {meta_from}  # it described the tensor wrongly
        else:
            t, g = np.frombuffer(truth, np.uint8), np.frombuffer(got, np.uint8)
            liars = {
                p
                for piece, p in pieces
                if not np.array_equal(t[piece.start : piece.end], g[piece.start : piece.end])
            }
        for peer_id in liars:
            self._caught(peer_id, name)

    def _caught(self, peer_id: str, name: str) -> None:
        self.stats.bad_tensors += 1
        if peer_id in self.live:
            logger.warning(f"holder {peer_id} served a wrong {name!r} for {self.version[:12]}: dropping it")
        self.live.discard(peer_id)
