"""The direct bulk channel's parts: one-time tickets, the piece plan, the request format, and the server
over a real loopback socket (bad tokens, spent tokens, out-of-range requests, the byte budget)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct

import numpy as np
import pytest

from potluck.exchange.bulk import (
    MAGIC,
    MAX_NAME_BYTES,
    MAX_PEER_CONNECTIONS,
    OK,
    REFUSED,
    BulkConnection,
    BulkServer,
    Tickets,
    encode_request,
    listen_ip,
    plan_pieces,
    recv_exactly,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_is_single_use_bound_to_its_peer_and_version_and_expires():
    clock = Clock()
    tickets = Tickets(ttl_s=5.0, clock=clock)
    token = tickets.issue("peerA", "v1")
    assert len(token) == 32 and tickets.issue("peerA", "v1") != token
    assert tickets.redeem(token) == ("peerA", "v1")
    assert tickets.redeem(token) is None  # spent
    assert tickets.redeem(b"\0" * 32) is None
    late = tickets.issue("peerB", "v2")
    clock.now += 5.0
    assert tickets.redeem(late) is None


def test_outstanding_tickets_are_bounded_oldest_first():
    tickets = Tickets(limit=3)
    tokens = [tickets.issue(f"p{i}", "v") for i in range(4)]
    assert tickets.redeem(tokens[0]) is None
    assert [tickets.redeem(t) for t in tokens[1:]] == [("p1", "v"), ("p2", "v"), ("p3", "v")]


def test_pieces_cover_every_tensor_exactly_and_split_large_ones():
    sizes = {"b": 10, "a": 25, "empty": 0, "c": 8}
    pieces = plan_pieces(sizes, piece_bytes=8)
    for name, size in sizes.items():
        mine = [p for p in pieces if p.name == name]
        assert mine[0].start == 0 and mine[-1].end == size
        assert all(x.end == y.start for x, y in itertools.pairwise(mine))
        assert all(p.end - p.start <= 8 for p in mine)
    assert [p.name for p in pieces] == sorted(p.name for p in pieces)
    assert len([p for p in pieces if p.name == "a"]) == 4  # 25 bytes: 7+7+7+4, balanced
    with pytest.raises(ValueError):
        plan_pieces(sizes, piece_bytes=0)


def test_request_format_and_name_limit():
    assert encode_request("w", 3, 7) == struct.pack("!H", 1) + b"w" + struct.pack("!QQ", 3, 7)
    with pytest.raises(ValueError):
        encode_request("x" * (MAX_NAME_BYTES + 1), 0, 1)


def test_the_channel_listens_on_the_ip_of_the_first_ip_listen_address():
    assert listen_ip(["/ip4/10.1.2.3/tcp/4001", "/ip4/127.0.0.1/tcp/0"]) == "10.1.2.3"
    assert listen_ip(["/ip4/0.0.0.0/udp/1/quic", "/ip6/::/tcp/0"]) == "::"
    assert listen_ip(["/dns4/example.org/tcp/1"]) is None


def _raw(port: int, hello: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(hello)
    return sock


def test_server_serves_ranges_to_a_ticket_and_nothing_to_anyone_else():
    state = {"w": np.arange(1000, dtype=np.float32), "b": np.ones(3, dtype=np.int64)}

    async def scenario() -> None:
        server = BulkServer(lambda version: state if version == "v1" else None)
        await server.start("127.0.0.1")
        try:

            def run() -> None:
                # a good ticket: any ranges of the version, byte for byte
                token = server.tickets.issue("peer", "v1")
                conn = BulkConnection("127.0.0.1", server.port, token)
                out = np.empty(1000, dtype=np.float32)
                view = memoryview(out.view(np.uint8))
                conn.read_into("w", 0, view[:1600])
                conn.read_into("w", 1600, view[1600:])
                assert np.array_equal(out, state["w"])
                with pytest.raises(ConnectionError):  # past the tensor's end: refused, connection closed
                    conn.read_into("b", 8, memoryview(bytearray(24)))
                conn.close()

                # unknown or spent token, wrong magic, a version not held: closed without a byte
                other = server.tickets.issue("peer", "v2")
                for hello in (MAGIC + token, MAGIC + b"\1" * 32, b"nonsense" + token, MAGIC + other):
                    sock = _raw(server.port, hello + encode_request("w", 0, 4))
                    with contextlib.suppress(ConnectionResetError):  # closed with our request unread
                        assert sock.recv(1) == b""
                    sock.close()

                # a connection may read at most twice the version's bytes
                sock = _raw(server.port, MAGIC + server.tickets.issue("peer", "v1"))
                got = bytearray(1)
                for _ in range(2):
                    sock.sendall(encode_request("w", 0, 4000))
                    recv_exactly(sock, memoryview(got))
                    assert got == OK
                    recv_exactly(sock, memoryview(bytearray(4000)))
                sock.sendall(encode_request("w", 0, 4000))
                recv_exactly(sock, memoryview(got))
                assert got == REFUSED
                sock.close()

            await asyncio.to_thread(run)
            assert server.bytes_served == 4000 + 8000

            def hog() -> None:
                # one peer holds at most MAX_PEER_CONNECTIONS connections; another peer still gets one
                one, held = memoryview(bytearray(4)), []
                for _ in range(MAX_PEER_CONNECTIONS + 1):  # one after the other: the last is the extra one
                    held.append(BulkConnection("127.0.0.1", server.port, server.tickets.issue("hog", "v1")))
                    if len(held) <= MAX_PEER_CONNECTIONS:
                        held[-1].read_into("w", 0, one)
                with pytest.raises(ConnectionError):
                    held[-1].read_into("w", 0, one)
                fair = BulkConnection("127.0.0.1", server.port, server.tickets.issue("other", "v1"))
                fair.read_into("w", 0, one)
                for conn in [*held, fair]:
                    conn.close()

            await asyncio.to_thread(hog)
        finally:
            await server.stop()

    asyncio.run(scenario())
