"""Every byte on the wire, by kind: the kernel's count for the node's p2pd, and potluck's own share.

Ground truth: the node's p2pd (one per node, a child of the daemon process; the DHT thread and the
averagers hold replicas connected to it) does all the node's networking. :class:`Traffic` samples
the TCP byte counters of p2pd's sockets from the kernel (potluck.swarm.sockdiag) every
``SAMPLE_S`` and keeps a running total: the last-seen counters of a socket that closed stay in the
total. Lost: what a socket moved after its last sample before it closed, every socket that opened
and closed between two samples, and a closed socket's bytes if the kernel gives its inode to a new
socket before the next sample.

By kind: hivemind's P2P is patched in this process and every process forked from it (the DHT
child, the averagers) to count the protobuf bytes of each call and each served request, by handler
name: our own handlers (update transfer, slices, state sync), hivemind's averager (aggregation) and
its DHT protocol. A DHT call made by potluck (SwarmHost.store/get) runs under :func:`calling` with
the kind its key names (peer records, announcements, entries, commits, evidence), and a request
another node makes of ours for a key this node used itself takes that kind too; the rest of the DHT
traffic (routing upkeep, the averager's matchmaking keys, keys this node never used) counts as
``dht_upkeep``. The kernel's total minus everything counted is ``transport``: libp2p's framing
and encryption, and its own protocols (identify, ping). Counts from all processes land in one
shared array, one row per process so no two processes write the same word.
"""

from __future__ import annotations

import contextlib
import contextvars
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

from hivemind.dht.routing import DHTID
from hivemind.p2p import P2P

from potluck.swarm import sockdiag

KINDS = (
    "dht_upkeep", "records", "announcements", "update_transfer", "entries", "aggregation", "commits",
    "sync", "defence", "declarations", "other", "sync_direct",
)  # fmt: skip
# bytes on the node's own sockets beside p2pd's (version sync's direct channel, exchange/bulk.py): in
# the total, but not part of what the kernel says p2pd moved
DIRECT = "sync_direct"
_KEY_KINDS = (
    ("/peers", "records"), ("/updates/", "announcements"), ("/entries", "entries"),
    ("/commits/", "commits"), ("/evidence/", "defence"), ("/faults", "aggregation"),
    ("/declared", "declarations"), ("/modules", "announcements"),
)  # fmt: skip
POST_HANDLER = "potluck.v1.Post"  # swarm/bulletin.py: a record pushed beside its DHT copy, kind by key
_HANDLER_KINDS = {
    "potluck.v1.GetUpdate": "update_transfer",
    "potluck.v1.PushUpdate": "update_transfer",
    "potluck.v1.GetSlice": "aggregation",
    "potluck.v1.GetTensor": "sync",
    "potluck.v1.GetManifest": "sync",
    "potluck.v1.GetModule": "update_transfer",
}
STREAM_FRAMING = 9  # hivemind's marker byte and 8-byte length before each stream message
MAX_KNOWN_KEYS = 4096
SLOTS = 64  # processes counting at once per machine-wide fork tree (the daemon, its averagers)
SAMPLE_S = 2.0
WINDOW_S = 10.0

# A one-element list rather than the kind itself: a task that hivemind starts inside a call (its cache
# refresher) keeps the context, and so the list, for good; emptied when the call returns, it no longer
# names the call's kind.
_call_kind: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "potluck_call_kind", default=None
)


def kind_of_key(key: str) -> str:
    """The kind of a DHT key potluck stores or reads (``potluck/<run>/...``)."""
    for marker, kind in _KEY_KINDS:
        if marker in key:
            return kind
    return "other"


def kind_of_call(name: str, message: Any) -> str:
    """The kind of one call's traffic: a pushed record's is its key's, any other its handler's."""
    if name == POST_HANDLER:
        return kind_of_key(str(getattr(message, "key", "")))
    return kind_of_handler(name)


def kind_of_handler(name: str) -> str:
    """The kind of a libp2p handler's traffic; a DHT call's kind is the potluck call it serves."""
    if "DHTProtocol." in name:
        return next(iter(_call_kind.get() or ()), "dht_upkeep")
    if "Averager." in name:
        return "aggregation"
    return _HANDLER_KINDS.get(name, "other")


_key_kinds: dict[bytes, str] = {}  # on the DHT's thread: the DHT ids of the keys potluck used -> their kind


def _remember(key: str, kind: str) -> None:
    if len(_key_kinds) >= MAX_KNOWN_KEYS:
        _key_kinds.clear()
    _key_kinds[DHTID.generate(source=key).to_bytes()] = kind


def served_kind(name: str, request: Any) -> str:
    """The kind of a request another node made of ours: a DHT request for a key this node uses itself
    (everyone reads the same peer, announcement and evidence keys) takes that key's kind."""
    kind = kind_of_call(name, request)
    keys = getattr(request, "keys", None) if kind == "dht_upkeep" else None
    return _key_kinds.get(bytes(keys[0]), kind) if keys else kind


@contextlib.contextmanager
def calling(kind: str) -> Iterator[None]:
    """Count the DHT traffic of the calls made inside as ``kind`` (tasks started inside inherit it)."""
    holder = [kind]
    token = _call_kind.set(holder)
    try:
        yield
    finally:
        holder.clear()
        _call_kind.reset(token)


# ---- one row per process -------------------------------------------------------------------------

_owners = mp.get_context("fork").RawArray("i", SLOTS)  # pid counting in each row; row 0: the first process
_row = 0
_next_row = 0


def _alive(pid: int) -> bool:
    if pid <= 0:  # a row nobody has taken (0 would signal our own process group)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _before_fork() -> None:
    global _next_row
    for row in range(1, SLOTS):
        if row != _row and not _alive(_owners[row]):
            _next_row = row
            return
    _next_row = SLOTS - 1  # all taken: share the last row (concurrent adds may then lose a few counts)


def _after_fork_in_child() -> None:
    global _row
    _row = _next_row
    _owners[_row] = os.getpid()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


class TrafficCounters:
    """Bytes sent and received by kind, shared with the processes forked after it is made."""

    def __init__(self) -> None:
        self._array = mp.get_context("fork").RawArray("Q", SLOTS * len(KINDS) * 2)

    def add(self, kind: str, sent: int = 0, received: int = 0) -> None:
        i = (_row * len(KINDS) + KINDS.index(kind)) * 2
        self._array[i] += sent
        self._array[i + 1] += received

    def totals(self) -> dict[str, tuple[int, int]]:
        """kind -> (sent, received), summed over every process."""
        out = dict.fromkeys(KINDS, (0, 0))
        values = self._array[:]
        for row in range(SLOTS):
            for k, kind in enumerate(KINDS):
                i = (row * len(KINDS) + k) * 2
                if values[i] or values[i + 1]:
                    s, r = out[kind]
                    out[kind] = (s + values[i], r + values[i + 1])
        return out


# ---- counting hivemind's P2P calls -----------------------------------------------------------------

_by_daemon: dict[str, TrafficCounters] = {}  # p2pd's control socket -> its node's counters (inherited)


def register(p2p: P2P, counters: TrafficCounters) -> None:
    _by_daemon[str(p2p.daemon_listen_maddr)] = counters


def unregister(p2p: P2P) -> None:
    _by_daemon.pop(str(p2p.daemon_listen_maddr), None)


def counters_of(p2p: P2P) -> TrafficCounters | None:
    """The counters of the node whose p2pd ``p2p`` talks to (None: not counted)."""
    return _by_daemon.get(str(getattr(p2p, "_daemon_listen_maddr", "")))


class _Counting:
    """An async iterator of protobuf messages that counts each one; no generator frame of its own, so
    closing and cancelling reach the wrapped iterator unchanged."""

    def __init__(self, inner: AsyncIterator[Any], counters: TrafficCounters, kind: str, sent: bool):
        self._inner, self._counters, self._kind, self._sent = inner, counters, kind, sent

    def __aiter__(self) -> _Counting:
        return self

    async def __anext__(self) -> Any:
        item = await self._inner.__anext__()
        size = _size(item) + STREAM_FRAMING
        self._counters.add(self._kind, size if self._sent else 0, 0 if self._sent else size)
        return item

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()


def _size(message: Any) -> int:
    with contextlib.suppress(Exception):
        return int(message.ByteSize())
    return 0


def install_p2p_hooks() -> None:
    """Patch hivemind's P2P in this process (and every process forked from it); idempotent. Calls on a
    P2P whose p2pd has no registered counters are not counted."""
    if getattr(P2P, "_potluck_counting", False):
        return
    call_unary = P2P._call_unary_protobuf_handler
    iterate = P2P._iterate_protobuf_stream_handler
    add_unary = P2P._add_protobuf_unary_handler
    add_stream = P2P._add_protobuf_stream_handler

    async def counted_call_unary(self: P2P, peer_id: Any, name: str, input: Any, output_type: Any) -> Any:
        response = await call_unary(self, peer_id, name, input, output_type)
        counters = counters_of(self)
        if counters is not None:
            counters.add(kind_of_call(name, input), _size(input), _size(response))
        return response

    async def counted_iterate(self: P2P, peer_id: Any, name: str, requests: Any, output_type: Any) -> Any:
        counters = counters_of(self)
        if counters is None:
            return await iterate(self, peer_id, name, requests, output_type)
        kind = kind_of_handler(name)
        responses = await iterate(self, peer_id, name, _Counting(requests, counters, kind, True), output_type)
        return _Counting(responses, counters, kind, False)

    async def counted_add_unary(self: P2P, name: str, handler: Any, input_type: Any, **kwargs: Any) -> None:
        async def serve(request: Any, context: Any) -> Any:
            response = await handler(request, context)
            counters = counters_of(self)
            if counters is not None:
                counters.add(served_kind(name, request), _size(response), _size(request))
            return response

        await add_unary(self, name, serve, input_type, **kwargs)

    async def counted_add_stream(self: P2P, name: str, handler: Any, input_type: Any, **kwargs: Any) -> None:
        def serve(requests: Any, context: Any) -> Any:
            counters = counters_of(self)
            if counters is None:
                return handler(requests, context)
            kind = kind_of_handler(name)
            return _Counting(
                handler(_Counting(requests, counters, kind, False), context), counters, kind, True
            )

        await add_stream(self, name, serve, input_type, **kwargs)

    P2P._call_unary_protobuf_handler = counted_call_unary
    P2P._iterate_protobuf_stream_handler = counted_iterate
    P2P._add_protobuf_unary_handler = counted_add_unary
    P2P._add_protobuf_stream_handler = counted_add_stream
    P2P._potluck_counting = True


# ---- the node's view: kernel totals, counted kinds, a recent rate ----------------------------------


class Traffic:
    """The node's traffic: what the kernel says p2pd's TCP sockets moved, and what was counted by kind."""

    def __init__(self, counters: TrafficCounters | None = None) -> None:
        self.counters = counters or TrafficCounters()
        self.kernel = "not started"  # "ok", or why the kernel's counters cannot be read
        self._pid: int | None = None
        self._closed = [0, 0]  # sent, received by sockets that have closed
        self._live: dict[int, sockdiag.SocketBytes] = {}
        self._history: deque[tuple[float, dict[str, tuple[int, int]]]] = deque()

    def watch(self, pid: int | None) -> None:
        """Read the kernel's counters for process ``pid`` (the node's p2pd) from now on."""
        self._pid = pid

    def _sample_kernel(self) -> None:
        if self._pid is None:
            self.kernel = "unavailable: no p2pd process"
            return
        try:
            live = sockdiag.tcp_bytes(sockdiag.socket_inodes(self._pid))
        except (OSError, sockdiag.DiagError) as e:
            self.kernel = f"unavailable: {type(e).__name__}: {e}"
            return
        for inode, last in self._live.items():
            if inode not in live:
                self._closed[0] += last.sent
                self._closed[1] += last.received
        self._live = live
        self.kernel = "ok"

    def kernel_totals(self) -> tuple[int, int] | None:
        if self.kernel != "ok":
            return None
        return (
            self._closed[0] + sum(s.sent for s in self._live.values()),
            self._closed[1] + sum(s.received for s in self._live.values()),
        )

    def sample(self, now: float | None = None) -> dict[str, tuple[int, int]]:
        """Read the kernel and the counters now; kind -> (sent, received), ``total`` and ``transport``
        (the kernel's bytes no kind accounts for) included when the kernel could be read."""
        now = time.monotonic() if now is None else now
        by_kind = self.counters.totals()  # first: what was counted is on the wire by the kernel's read
        self._sample_kernel()
        kernel = self.kernel_totals()
        if kernel is not None:
            direct = by_kind.get(DIRECT, (0, 0))
            by_kind["total"] = (kernel[0] + direct[0], kernel[1] + direct[1])
            via_p2pd = [v for k, v in self.counters_only(by_kind).items() if k != DIRECT]
            counted = [sum(v[d] for v in via_p2pd) for d in (0, 1)]
            by_kind["transport"] = (max(0, kernel[0] - counted[0]), max(0, kernel[1] - counted[1]))
        self._history.append((now, by_kind))
        while len(self._history) > 2 and now - self._history[1][0] >= WINDOW_S:
            self._history.popleft()
        return by_kind

    @staticmethod
    def counters_only(by_kind: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        return {k: v for k, v in by_kind.items() if k in KINDS}

    def rates(self) -> tuple[float, dict[str, tuple[float, float]]]:
        """(window in seconds, name -> (sent B/s, received B/s)) over the samples of the last WINDOW_S."""
        if len(self._history) < 2:
            return 0.0, {}
        (t0, first), (t1, last) = self._history[0], self._history[-1]
        span = t1 - t0
        if span <= 0:
            return 0.0, {}
        out = {}
        for name, (s, r) in last.items():
            s0, r0 = first.get(name, (0, 0))
            out[name] = ((s - s0) / span, (r - r0) / span)
        return span, out

    def status(self) -> dict[str, Any]:
        """The latest sample as plain data (for the control API and benchmarks)."""
        latest = self._history[-1][1] if self._history else self.counters.totals()
        window, rates = self.rates()

        def entry(name: str) -> dict[str, float]:
            s, r = latest.get(name, (0, 0))
            rs, rr = rates.get(name, (0.0, 0.0))
            return {"sent": s, "recv": r, "sent_rate": rs, "recv_rate": rr}

        names = [*KINDS, "transport"] if "transport" in latest else list(KINDS)
        return {
            "kernel": self.kernel,
            "total": entry("total") if "total" in latest else None,
            "kinds": {name: entry(name) for name in names},
            "window_s": window,
        }


# ---- potluck's DHT calls, run on the DHT's loop under their kind ------------------------------------


async def dht_store(
    kind: str, key: str, subkey: bytes, value: bytes, expiration_time: float, _dht: Any, node: Any
) -> bool:
    _remember(key, kind)
    with calling(kind):
        return bool(await node.store(key, value, expiration_time, subkey=subkey))


async def dht_get(kind: str, key: str, _dht: Any, node: Any) -> Any:
    _remember(key, kind)
    with calling(kind):
        return await node.get(key, latest=True)
