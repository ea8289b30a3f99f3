"""The direct bulk channel of version sync: tensor bytes over a plain TCP socket beside libp2p.

Why: on the 2-core box, 100 MB from one holder take ~0.45 s through the libp2p daemon's streams (two
p2pd hops, encryption, protobuf chunks) against ~0.1 s over raw loopback TCP, whatever the chunk size;
bench/README.md has the numbers. A holder therefore also serves its tensors on an ephemeral TCP port
of the IP it listens on for libp2p; libp2p stays the path for peers that cannot be reached directly.

Access: a newcomer asks the holder over libp2p (authenticated, ``GetBulkTicket``) for a ticket: the
address, the port and a 32-byte random token, issued only to that peer and bound to it and to the
version (the connection reads that version only and counts against that peer's connections). A token
opens one TCP connection, once, within ``TICKET_TTL_S``. The TCP stream itself carries no
authentication and no TLS: the caller checks every tensor against its hash in the quorum-signed commit.

Wire (all integers big-endian): the client sends ``MAGIC`` and the token; then any number of requests,
``u16 name length, name (UTF-8), u64 offset, u64 length``, each answered with a status byte (``OK`` then
exactly ``length`` bytes of the tensor's little-endian C-order bytes, or ``REFUSED`` and the connection
closes). The server bounds its connections (in all and per peer), the bytes a connection may read
(twice the version) and the time any read or write may stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

MAGIC = b"potbulk1"
TOKEN_BYTES = 32
TICKET_TTL_S = 10.0  # a ticket not redeemed by then is void
MAX_TICKETS = 256  # outstanding per holder; the oldest go first
MAX_CONNECTIONS = 8
MAX_PEER_CONNECTIONS = 2  # one peer (a newcomer has one connection per holder) cannot take every slot
IO_TIMEOUT_S = 20.0  # a read or write that stalls this long ends the connection (slow or dead peer)
CONNECT_TIMEOUT_S = 3.0  # an address we cannot reach directly (NAT, firewall): libp2p instead
MAX_NAME_BYTES = 1024
PIECE_BYTES = 8 << 20  # tensors are fetched in byte ranges of at most this, spread over holders
OK, REFUSED = b"\x00", b"\x01"
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)  # Linux; Python names it from 3.12 on
_REQUEST = struct.Struct("!QQ")


# ---- pure parts: tickets, pieces, requests ----------------------------------------------------------


class Tickets:
    """One-time tokens bound to (peer, version); ``clock`` is injectable for tests."""

    def __init__(self, ttl_s: float = TICKET_TTL_S, limit: int = MAX_TICKETS, clock=time.monotonic):
        self._ttl, self._limit, self._clock = ttl_s, limit, clock
        self._open: dict[bytes, tuple[str, str, float]] = {}  # token -> peer, version, expiry
        self._lock = threading.Lock()  # redeemed from the server's connection threads

    def issue(self, peer: str, version: str) -> bytes:
        token = secrets.token_bytes(TOKEN_BYTES)
        with self._lock:
            now = self._clock()
            self._open = {t: v for t, v in self._open.items() if v[2] > now}
            while len(self._open) >= self._limit:
                del self._open[next(iter(self._open))]
            self._open[token] = (peer, version, now + self._ttl)
        return token

    def redeem(self, token: bytes) -> tuple[str, str] | None:
        """(peer, version) of a valid token, which is spent; None for an unknown, spent or expired one."""
        with self._lock:
            entry = self._open.pop(bytes(token), None)
        if entry is None or entry[2] <= self._clock():
            return None
        return entry[0], entry[1]


@dataclass(frozen=True)
class Piece:
    name: str
    start: int
    end: int


def plan_pieces(sizes: Mapping[str, int], piece_bytes: int = PIECE_BYTES) -> list[Piece]:
    """Every tensor's bytes as ranges of at most ``piece_bytes``, by name then offset (an empty tensor is
    one empty piece), so that holders pulling them from one queue share large tensors too."""
    if piece_bytes <= 0:
        raise ValueError("piece_bytes must be positive")
    pieces = []
    for name in sorted(sizes):
        size = sizes[name]
        count = max(1, math.ceil(size / piece_bytes))
        step = math.ceil(size / count) if size else 0
        pieces += [Piece(name, i * step, min(size, (i + 1) * step)) for i in range(count)]
    return pieces


def encode_request(name: str, offset: int, length: int) -> bytes:
    encoded = name.encode()
    if len(encoded) > MAX_NAME_BYTES:
        raise ValueError(f"tensor name longer than {MAX_NAME_BYTES} bytes")
    return struct.pack("!H", len(encoded)) + encoded + _REQUEST.pack(offset, length)


def listen_ip(listen: Sequence[str]) -> str | None:
    """The IP of the first /ip4 or /ip6 TCP listen multiaddr (the direct channel listens there too)."""
    for addr in listen:
        parts = addr.split("/")
        if len(parts) >= 5 and parts[1] in ("ip4", "ip6") and parts[3] == "tcp":
            return parts[2]
    return None


def tensor_view(array: np.ndarray) -> memoryview:
    """The tensor's little-endian C-order bytes, without a copy when it already is so."""
    a = np.ascontiguousarray(array)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return memoryview(a.reshape(-1).view(np.uint8))


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    while view.nbytes:
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("connection closed mid-message")
        view = view[n:]


# ---- the holder's server --------------------------------------------------------------------------


class BulkServer:
    """Serves byte ranges of held versions to ticket holders; a thread per connection (sendall and
    recv_into release the GIL), at most ``MAX_CONNECTIONS`` of them."""

    def __init__(self, lookup: Callable[[str], Mapping[str, np.ndarray] | None]):
        self.lookup = lookup  # version -> its tensors, or None; called from connection threads
        self.tickets = Tickets()
        self.host, self.port = "", 0
        self.bytes_served = 0
        self.on_sent: Callable[[int], None] | None = None  # bytes served, as they go (traffic counters)
        self._sock: socket.socket | None = None
        self._task: asyncio.Task | None = None
        self._conns: set[socket.socket] = set()
        self._peers: Counter[str] = Counter()  # peer -> its open connections
        self._lock = threading.Lock()

    async def start(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, 0), family=family, backlog=MAX_CONNECTIONS)
        self._sock.setblocking(False)
        self.host, self.port = host, self._sock.getsockname()[1]
        self._task = asyncio.create_task(self._accept(), name="bulk-accept")

    def pace(self, bytes_per_s: int) -> None:
        """Cap every connection's send rate (the kernel's TCP pacing, inherited from the listening
        socket), e.g. to spare an uplink, or to give a benchmark on loopback a real link's limit."""
        assert self._sock is not None
        self._sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, bytes_per_s or 0xFFFFFFFF)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with self._lock:
            for conn in self._conns:  # wakes their threads
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self.port = 0

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        try:
            while True:
                conn, _ = await loop.sock_accept(self._sock)
                with self._lock:
                    full = len(self._conns) >= MAX_CONNECTIONS
                    if not full:
                        self._conns.add(conn)
                if full:
                    conn.close()
                    continue
                threading.Thread(target=self._serve, args=(conn,), name="bulk-conn", daemon=True).start()
        finally:
            _close(self._sock)

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(IO_TIMEOUT_S)
            self._session(conn)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            logger.debug(f"bulk connection ended: {type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._conns.discard(conn)
            _close(conn)

    def _session(self, conn: socket.socket) -> None:
        hello = bytearray(len(MAGIC) + TOKEN_BYTES)
        recv_exactly(conn, memoryview(hello))
        ticket = self.tickets.redeem(hello[len(MAGIC) :]) if hello.startswith(MAGIC) else None
        if ticket is None:
            return
        peer = ticket[0]
        with self._lock:
            if self._peers[peer] >= MAX_PEER_CONNECTIONS:
                return
            self._peers[peer] += 1
        try:
            self._read(conn, ticket[1])
        finally:
            with self._lock:
                self._peers[peer] -= 1
                if not self._peers[peer]:
                    del self._peers[peer]

    def _read(self, conn: socket.socket, version: str) -> None:
        state = self.lookup(version)
        if state is None:
            return
        budget = 2 * sum(int(a.nbytes) for a in state.values())
        head, fixed = bytearray(2), bytearray(_REQUEST.size)
        while True:
            try:
                recv_exactly(conn, memoryview(head))
            except ConnectionError:
                return  # the client is done
            name = bytearray(struct.unpack("!H", head)[0])
            if len(name) > MAX_NAME_BYTES:
                return
            recv_exactly(conn, memoryview(name))
            recv_exactly(conn, memoryview(fixed))
            offset, length = _REQUEST.unpack(fixed)
            array = state.get(name.decode())
            data = tensor_view(array) if array is not None else None
            if data is None or offset + length > data.nbytes or length > budget:
                conn.sendall(REFUSED)
                return
            budget -= length
            conn.sendall(OK)
            conn.sendall(data[offset : offset + length])
            with self._lock:
                self.bytes_served += length
            if self.on_sent is not None:
                self.on_sent(length)


def _close(sock: socket.socket) -> None:
    """Shut the socket down, then close it: processes forked meanwhile (averagers) hold
    copies of its descriptor, and only a shutdown ends the connection (or the listening) for them too."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


# ---- the newcomer's side ----------------------------------------------------------------------------


class BulkConnection:
    """One redeemed ticket: blocking reads of byte ranges (run it in a thread)."""

    def __init__(self, host: str, port: int, token: bytes):
        self._sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        self._sock.settimeout(IO_TIMEOUT_S)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.sendall(MAGIC + token)
        self.bytes_read = 0

    def read_into(self, name: str, offset: int, view: memoryview) -> None:
        """Bytes [offset, offset + len(view)) of tensor ``name`` into ``view``."""
        self._sock.sendall(encode_request(name, offset, view.nbytes))
        status = bytearray(1)
        recv_exactly(self._sock, memoryview(status))
        if status != OK:
            raise ConnectionError(f"holder refused bytes {offset}+{view.nbytes} of {name!r}")
        recv_exactly(self._sock, view)
        self.bytes_read += view.nbytes

    def read_hashed(self, name: str, view: memoryview, hasher: Hashing, piece: int = PIECE_BYTES) -> None:
        """All of ``name`` into ``view``, asked for in pieces of at most ``piece`` bytes at once (pipelined)
        and each piece handed to ``hasher.update`` as soon as it is in: hashing overlaps the transfer."""
        starts = range(0, view.nbytes, piece) if view.nbytes else range(1)
        self._sock.sendall(b"".join(encode_request(name, s, min(piece, view.nbytes - s)) for s in starts))
        status = bytearray(1)
        for start in starts:
            part = view[start : start + piece]
            recv_exactly(self._sock, memoryview(status))
            if status != OK:
                raise ConnectionError(f"holder refused bytes {start}+{part.nbytes} of {name!r}")
            recv_exactly(self._sock, part)
            hasher.update(part)
            self.bytes_read += part.nbytes

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


class Hashing(Protocol):
    def update(self, data: memoryview, /) -> None: ...
