"""Byte payloads as streams of ``UpdateChunk`` (updates, slices, pushes): the first chunk carries the
total size (0: "I don't have it"), every chunk at most 1 MiB, the receiver bounded by a size limit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence

from google.protobuf.message import Message
from hivemind.p2p import PeerID

from potluck.swarm.host import SwarmHost
from potluck.v1 import exchange_pb2

CHUNK_BYTES = 1 << 20  # below p2pd's 2 MiB message limit, with room for framing


class NotHeld(Exception):
    """The peer answered that it does not hold what was asked for."""


class BadStream(Exception):
    """The peer's chunks are not a well-formed payload within the limit."""


class TooLarge(BadStream):
    """The peer offers more bytes than the receiver allows."""


def chunked(data: bytes | None) -> Iterator[exchange_pb2.UpdateChunk]:
    """``data`` as chunks; ``None`` or empty: one chunk of total_size 0."""
    if not data:
        yield exchange_pb2.UpdateChunk(total_size=0)
        return
    for offset in range(0, len(data), CHUNK_BYTES):
        yield exchange_pb2.UpdateChunk(
            total_size=len(data) if offset == 0 else 0, data=data[offset : offset + CHUNK_BYTES]
        )


async def received(stream: AsyncIterator[exchange_pb2.UpdateChunk], limit: int) -> bytes:
    """The payload of a chunk stream from an untrusted peer, else :class:`NotHeld`, :class:`TooLarge`
    or :class:`BadStream`."""
    buffer, total = bytearray(), None
    async for chunk in stream:
        if total is None:
            total = chunk.total_size
            if total == 0:
                raise NotHeld("not held")
            if total > limit:
                raise TooLarge(f"offers {total} bytes > {limit} allowed")
        buffer += chunk.data
        if len(buffer) > total:
            raise BadStream("sent more than it declared")
    if total is None or len(buffer) != total:
        raise BadStream("truncated")
    return bytes(buffer)


async def download_from(
    host: SwarmHost, holder: str, addrs: Sequence[str], handler: str, request: Message, limit: int
) -> bytes:
    """The payload ``holder`` streams from ``handler`` for ``request``, unchecked, at most ``limit`` bytes
    (NotHeld, BadStream as :func:`received`). ``addrs``: the holder's multiaddrs, from its peer record:
    p2pd may not know where it is yet."""
    peer = PeerID.from_base58(holder)
    if addrs:
        await host.connect(peer, addrs)
    stream = await host.p2p.iterate_protobuf_handler(peer, handler, request, exchange_pb2.UpdateChunk)
    return await received(stream, limit)
