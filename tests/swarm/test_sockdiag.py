"""potluck.swarm.sockdiag: the sock_diag request and reply, as bytes; and one real query of this process."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from potluck.swarm import sockdiag


def _message(kind: int, body: bytes) -> bytes:
    header = struct.pack("=IHHII", 16 + len(body), kind, 0, 1, 0)
    return header + body + b"\0" * (-len(body) % 4)


def _socket(inode: int, sent: int, received: int, info_len: int = 232) -> bytes:
    msg = struct.pack("=BBBB48sIIIII", socket.AF_INET, 1, 0, 0, b"", 0, 0, 0, 1000, inode)
    info = bytearray(info_len)
    if info_len >= 136:
        struct.pack_into("=QQ", info, sockdiag.TCPI_BYTES_OFFSET, sent, received)
    other = struct.pack("=HH", 8, 99) + b"abcd"  # an attribute we skip
    attr = struct.pack("=HH", 4 + len(info), sockdiag.INET_DIAG_INFO) + bytes(info)
    return _message(sockdiag.SOCK_DIAG_BY_FAMILY, msg + other + attr)


def test_a_dump_request_asks_for_tcp_info_of_every_tcp_socket():
    request = sockdiag.dump_request(socket.AF_INET6, seq=7)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", request)
    family, protocol, ext, _, states = struct.unpack_from("=BBBBI", request, 16)
    assert (length, kind, seq) == (len(request), 20, 7) and flags == 0x301
    assert (family, protocol, ext, states) == (socket.AF_INET6, socket.IPPROTO_TCP, 2, 0xFFFFFFFF)


def test_the_reply_gives_each_sockets_bytes_until_done():
    data = _socket(11, 1000, 2000) + _socket(12, 5, 7)
    found, done = sockdiag.parse_dump(data)
    assert found == [sockdiag.SocketBytes(11, 1000, 2000), sockdiag.SocketBytes(12, 5, 7)] and not done
    found, done = sockdiag.parse_dump(_socket(13, 1, 2) + _message(sockdiag.NLMSG_DONE, b"\0" * 4))
    assert [s.inode for s in found] == [13] and done


def test_a_socket_without_the_byte_counters_is_skipped():
    found, _ = sockdiag.parse_dump(_socket(11, 1, 2, info_len=104))  # a kernel before 4.2
    assert found == []


def test_an_error_or_a_truncated_reply_is_a_diag_error():
    with pytest.raises(sockdiag.DiagError, match="Operation not permitted"):
        sockdiag.parse_dump(_message(sockdiag.NLMSG_ERROR, struct.pack("=i", -1) + b"\0" * 16))
    with pytest.raises(sockdiag.DiagError, match="overruns"):
        sockdiag.parse_dump(_socket(11, 1, 2)[:-8])


def test_the_kernel_counts_a_loopback_connection_of_this_process():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    try:
        client.sendall(b"x" * 5000)
        assert len(peer.recv(5000, socket.MSG_WAITALL)) == 5000
        inodes = sockdiag.socket_inodes(os.getpid())
        assert os.fstat(client.fileno()).st_ino in inodes
        try:
            counts = sockdiag.tcp_bytes({os.fstat(client.fileno()).st_ino, os.fstat(peer.fileno()).st_ino})
        except (OSError, sockdiag.DiagError) as e:
            pytest.skip(f"netlink sock_diag unavailable here: {e}")
        sent = counts[os.fstat(client.fileno()).st_ino].sent
        received = counts[os.fstat(peer.fileno()).st_ino].received
        assert received == 5000 and sent in (5000, 5001)  # the kernel may count the SYN as one acked byte
    finally:
        for s in (client, peer, server):
            s.close()
