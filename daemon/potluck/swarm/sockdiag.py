"""Bytes a process's TCP sockets moved, from the kernel: a NETLINK_SOCK_DIAG (inet_diag) dump with
tcp_info, matched to the socket inodes in ``/proc/<pid>/fd``.

The request building and reply parsing are pure functions of bytes (:func:`dump_request`,
:func:`parse_dump`); :func:`tcp_bytes` and :func:`socket_inodes` do the I/O. ``tcpi_bytes_acked`` is
what the peer acknowledged of what we sent and ``tcpi_bytes_received`` what we received: TCP
payload, without IP/TCP headers (Linux >= 4.2).
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
INET_DIAG_INFO = 2
ALL_STATES = 0xFFFFFFFF
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_REQ_V2 = struct.Struct("=BBBBI48s")  # family, protocol, ext, pad, states, inet_diag_sockid
_MSG = struct.Struct(
    "=BBBB48sIIIII"
)  # family, state, timer, retrans, id, expires, rqueue, wqueue, uid, inode
_RTA = struct.Struct("=HH")  # len, type
_TCPI_BYTES = struct.Struct("=QQ")  # tcpi_bytes_acked, tcpi_bytes_received
TCPI_BYTES_OFFSET = 120  # in struct tcp_info, after the u8/u32 fields and the two u64 pacing rates


class DiagError(Exception):
    """The kernel refused the request or answered with something we cannot read."""


@dataclass(frozen=True)
class SocketBytes:
    inode: int
    sent: int  # tcpi_bytes_acked
    received: int  # tcpi_bytes_received


def _align(n: int) -> int:
    return (n + 3) & ~3


def dump_request(family: int, seq: int = 1) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for every TCP socket of ``family``, asking for tcp_info."""
    body = _REQ_V2.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0, ALL_STATES, b"")
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + body


def parse_dump(data: bytes) -> tuple[list[SocketBytes], bool]:
    """The sockets in one datagram of a dump reply, and whether the dump is done (NLMSG_DONE seen).
    A socket without a tcp_info long enough to hold the byte counters is skipped."""
    found: list[SocketBytes] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise DiagError(f"netlink message of length {length} at {offset} overruns {len(data)} bytes")
        if kind == NLMSG_DONE:
            return found, True
        if kind == NLMSG_ERROR:
            (errno,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
            raise DiagError(f"sock_diag error: {os.strerror(-errno) if errno else 'ack'}")
        if kind == SOCK_DIAG_BY_FAMILY and length >= _NLMSGHDR.size + _MSG.size:
            found += _socket(data[offset + _NLMSGHDR.size : offset + length])
        offset += _align(length)
    return found, False


def _socket(msg: bytes) -> list[SocketBytes]:
    inode = _MSG.unpack_from(msg)[-1]
    offset = _MSG.size
    while offset + _RTA.size <= len(msg):
        length, kind = _RTA.unpack_from(msg, offset)
        if length < _RTA.size:
            break
        if kind == INET_DIAG_INFO and length - _RTA.size >= TCPI_BYTES_OFFSET + _TCPI_BYTES.size:
            sent, received = _TCPI_BYTES.unpack_from(msg, offset + _RTA.size + TCPI_BYTES_OFFSET)
            return [SocketBytes(inode, sent, received)]
        offset += _align(length)
    return []


def tcp_bytes(inodes: set[int]) -> dict[int, SocketBytes]:
    """inode -> bytes moved, for the TCP sockets (IPv4 and IPv6) among ``inodes``; DiagError or OSError
    if netlink sock_diag is unavailable."""
    out: dict[int, SocketBytes] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(2.0)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            sock.sendto(dump_request(family, seq), (0, 0))
            done = False
            while not done:
                found, done = parse_dump(sock.recv(1 << 16))
                out.update((s.inode, s) for s in found if s.inode in inodes)
    return out


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds open (OSError if it is gone or not ours)."""
    found = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found
