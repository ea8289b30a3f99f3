"""Chunk streams: what a node sends is what it receives; an untrusted peer's stream is bounded."""

from __future__ import annotations

import asyncio

import pytest

from potluck.exchange.chunks import CHUNK_BYTES, BadStream, NotHeld, TooLarge, chunked, received
from potluck.v1.exchange_pb2 import UpdateChunk


async def _stream(chunks):
    for c in chunks:
        yield c


def _receive(chunks, limit=10 * CHUNK_BYTES) -> bytes:
    return asyncio.run(received(_stream(chunks), limit))


@pytest.mark.parametrize("size", [1, CHUNK_BYTES - 1, CHUNK_BYTES, 2 * CHUNK_BYTES + 5])
def test_round_trip(size):
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    chunks = list(chunked(data))
    assert all(len(c.data) <= CHUNK_BYTES for c in chunks)
    assert _receive(chunks) == data


def test_nothing_is_not_held():
    assert [c.total_size for c in chunked(None)] == [0] == [c.total_size for c in chunked(b"")]
    with pytest.raises(NotHeld):
        _receive(list(chunked(None)))


@pytest.mark.parametrize(
    "chunks,error",
    [
        ([UpdateChunk(total_size=11 * CHUNK_BYTES, data=b"a")], TooLarge),
        ([UpdateChunk(total_size=2, data=b"abc")], BadStream),  # more than declared
        ([UpdateChunk(total_size=5, data=b"ab")], BadStream),  # truncated
        ([], BadStream),  # nothing at all
    ],
)
def test_a_bad_stream_is_refused(chunks, error):
    with pytest.raises(error):
        _receive(chunks)
