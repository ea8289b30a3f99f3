"""Multiaddrs a node is given (--listen, --initial-peers), checked before p2pd starts, and why dialing
one failed in a few words rather than libp2p's paragraph."""

from __future__ import annotations

import errno
import socket

from hivemind.p2p import PeerID
from hivemind.utils.multiaddr import Multiaddr

from potluck.errors import ConfigError

CONNECT_TIMEOUT_S = 5.0


def parse_initial_peer(text: str) -> tuple[PeerID, Multiaddr]:
    """A bootstrap multiaddr must end in /p2p/<peer id>: that is how we know whom we reach."""
    try:
        maddr = Multiaddr(text)
        peer = PeerID.from_base58(maddr["p2p"])
    except Exception:
        raise ConfigError(
            f"bad --initial-peers address {text!r}: expected e.g. /ip4/1.2.3.4/tcp/7451/p2p/12D3KooW..."
        ) from None
    return peer, maddr.decapsulate(Multiaddr(f"/p2p/{peer.to_base58()}"))


def check_listen_addr(text: str) -> str:
    try:
        maddr = Multiaddr(text)
    except Exception:
        raise ConfigError(f"bad --listen address {text!r}: expected e.g. /ip4/0.0.0.0/tcp/7451") from None
    if "p2p" in maddr:
        raise ConfigError(f"--listen address {text!r} must not name a peer")
    return str(maddr)


def check_port_free(text: str) -> None:
    """ConfigError if nothing may listen on ``text``'s fixed TCP port (another node has it). p2pd listens
    with SO_REUSEPORT, so a second p2pd on the same port starts anyway; a plain bind does not."""
    maddr = Multiaddr(text)
    family = socket.AF_INET if "ip4" in maddr else socket.AF_INET6 if "ip6" in maddr else None
    if family is None or "tcp" not in maddr or int(maddr["tcp"]) == 0:
        return
    host = maddr["ip4"] if family == socket.AF_INET else maddr["ip6"]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed node's TIME_WAIT is fine
        try:
            probe.bind((host, int(maddr["tcp"])))
        except OSError as e:
            reason = "address already in use (another node?)" if e.errno == errno.EADDRINUSE else e.strerror
            raise ConfigError(f"cannot listen on --listen {text}: {reason}") from None


DIAL_BACKOFF = "unreachable (libp2p waits before dialing it again)"
UNREACHABLE_HINT = (
    "check the address (`potluck id` on that node prints it), that the node there runs, "
    "and that its port is open from here"
)
# libp2p's dial errors end in Go's words for what went wrong; say it in a few of ours
_DIAL_REASONS = (
    ("connection refused", "connection refused (nothing listens there)"),
    ("dial backoff", DIAL_BACKOFF),
    ("i/o timeout", "no answer (timed out)"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network unreachable"),
    ("peer id mismatch", "a different node answers there (peer id mismatch)"),
    ("failed to negotiate security protocol", "the libp2p handshake failed (not a potluck node?)"),
)


def dial_reason(error: BaseException) -> str:
    """One short phrase for why dialing a peer failed (libp2p's own errors are a paragraph)."""
    if isinstance(error, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:.0f}s"
    text = str(error)
    for needle, reason in _DIAL_REASONS:
        if needle in text:
            return reason
    return " ".join(text.split())[-200:] or type(error).__name__


def p2pd_reason(error: Exception) -> str:
    text = str(error)
    if "address already in use" in text:
        return "address already in use"
    return text.splitlines()[0][:300] if text else type(error).__name__
