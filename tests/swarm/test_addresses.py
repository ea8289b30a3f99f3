"""potluck.swarm.addresses: a taken --listen port is refused before p2pd starts (p2pd itself would share
it), and a failed dial is said in a few words."""

from __future__ import annotations

import socket

import pytest

from potluck.errors import ConfigError
from potluck.swarm.addresses import DIAL_BACKOFF, check_port_free, dial_reason


def test_a_port_something_listens_on_is_refused():
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as p2pd does
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for addr in (f"/ip4/127.0.0.1/tcp/{port}", f"/ip4/0.0.0.0/tcp/{port}"):
            with pytest.raises(
                ConfigError, match=f"cannot listen on --listen {addr}: address already in use"
            ):
                check_port_free(addr)


def test_free_any_and_non_tcp_addresses_pass():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check_port_free(f"/ip4/127.0.0.1/tcp/{port}")  # closed again: free
    check_port_free("/ip4/127.0.0.1/tcp/0")  # any port: p2pd picks one
    check_port_free("/ip4/127.0.0.1/udp/7451/quic")  # not TCP: nothing to check


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (Exception("failed to dial: all dials failed * [/ip4/1.2.3.4/tcp/1] dial tcp4: connect: connection "
                   "refused"), "connection refused (nothing listens there)"),
        (Exception("failed to dial 12D3: all dials failed * [/ip4/1.2.3.4/tcp/1] dial backoff"),
         DIAL_BACKOFF),
        (TimeoutError(), "no answer within 5s"),
        (Exception("something\n   new"), "something new"),
    ],
)  # fmt: skip
def test_dial_errors_are_said_in_a_few_words(error, reason):
    assert dial_reason(error) == reason
