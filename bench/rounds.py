"""Round aggregation and version sync of a model among potluck peers, next to plain hivemind and raw TCP.

(1) all-reduce of a P-parameter model among N peers on 127.0.0.1, each peer its own process with its
    own hivemind DHT, four ways in the same run:
    (a) canonical: potluck's path, as engine/allreduce.py runs it: fixedpoint.pack of the peer's
        int64 contribution into a float64 vector with sentinels, a fresh CanonicalAverager with the
        engine's settings, step() with the engine's gather metadata, the engine's checks, a copy of
        the result, fixedpoint.unpack (exact int64 sum), the averager's shutdown, next_version and
        the version hash; every peer's version hash must be the same (`identical`).
    (b) plain: a fresh hivemind DecentralizedAverager (same matchmaking settings) on the same P float32
        values: step() alone, no canonicalisation, no checks.
    (c) tcp: what a butterfly all-reduce moves per peer, over plain loopback TCP sockets between the
        same N processes (reduce-scatter: send (N-1)/N of the vector, receive the others' parts of
        your slice and add them; all-gather: send your reduced slice to the N-1 others, receive
        theirs), once with (a)'s packed float64 vector and once with (b)'s float32 vector.
    (d) dense: potluck's own reduce-scatter and all-gather (exchange/dense.reduce_scatter, as
        engine/dense.py runs it) between the same N processes, each with a real SwarmHost (own p2pd)
        and DenseService: tickets over libp2p, every range in the narrowest integer type over the
        direct TCP channel, hashed (BLAKE3) as received and checked against its stated digest, every
        merged range's header signed (Ed25519) and verified; from a common start T to the exact sum on
        the last peer (step_s), then fixedpoint.next_version and the version hash as in (a) (result_s).
        Before T, reported apart as (a)'s pack is: each peer's parts encoded, hashed and offered, its
        buffers made (exchange/dense.prepare). Not timed: the audits against the signed updates (the
        bench has no signed updates; (a)'s audit is not timed either) and one warm-up run (the hosts'
        first dials).
        Every peer's version must be (a)'s (`equal_to_canonical`).
    Timing: every peer first forms its group (step(..., require_trigger=True, wait=False)), then all
    start the all-reduce at one common wall-clock instant T (allow_allreduce(); for tcp: the first
    send); a run's time is T -> the last peer has its result. Matchmaking and the work the daemon does
    before its scheduled time (pack, averager start, checksum) are reported apart.
(2) version sync: a newcomer downloads a P-parameter state (25 float32 tensors) with
    StateService.download from 1 and from 3 holders, each holder a separate process with its own
    SwarmHost (p2pd) serving the version from a VersionStore, three ways: bulk (the holders' direct TCP
    channels, exchange/bulk.py), p2p (the same pieces over libp2p streams only) and p2p_whole (whole
    tensors over libp2p streams: the path before pieces); baseline: the same tensors' bytes over plain
    TCP sockets from the same 1 and 3 holder processes. sync_paced: the same with every holder's
    sends capped (kernel TCP pacing, --holder-rate) as an uplink would cap them; bulk and tcp only.

    python bench/rounds.py [--params 25000000] [--peers 4] [--repeats 3] [--parts allreduce,sync,sync_paced]
                            [--kinds canonical,plain,dense] [--holder-rate 250] [--out FILE]

Progress goes to stderr, one JSON object to stdout (and to --out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import queue
import resource
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jsonchild import JsonChild  # bench/jsonchild.py: this script's folder is on the path

TIMEOUT_S = 180.0  # any single reply from a child; longer is a failure, not a number
TRIGGER_LEAD_S = 0.3  # the driver schedules the common start this far ahead of its message
TENSORS = 25  # the state is split into this many float32 tensors
SEED = 20240611
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)  # Linux; as exchange/bulk.py sets it
KINDS = ("canonical", "plain", "dense")  # (a), (b), (d); tcp (c) always runs


def log(message: str) -> None:
    print(f"[rounds] {message}", file=sys.stderr, flush=True)


def model_state(params: int) -> dict[str, np.ndarray]:
    """The base version every peer and holder shares: TENSORS float32 tensors, P values in all."""
    rng = np.random.default_rng(SEED)
    sizes = [params // TENSORS] * TENSORS
    sizes[-1] += params - sum(sizes)
    return {
        f"layer{i:02d}.weight": rng.standard_normal(size, dtype=np.float32) * np.float32(0.02)
        for i, size in enumerate(sizes)
    }


def node_key(index: int) -> bytes:
    return hashlib.sha256(f"bench-peer-{index}".encode()).digest()


def _cpu_times() -> tuple[float, float]:
    """(user + kernel, kernel) CPU seconds of this process; kernel time here is mostly page faults."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_stime


def _timed(out: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    """Run fn, recording its wall time as <name>_s and its CPU time as <name>_cpu_s / <name>_sys_s."""
    t, (cpu0, sys0) = time.perf_counter(), _cpu_times()
    result = fn()
    cpu1, sys1 = _cpu_times()
    out[f"{name}_s"] = time.perf_counter() - t
    out[f"{name}_cpu_s"], out[f"{name}_sys_s"] = cpu1 - cpu0, sys1 - sys0
    return result


def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


# ---- raw TCP: full mesh between the peer processes ----------------------------------------------


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("peer closed the connection")
        got += k


def _bytes(a: np.ndarray) -> memoryview:
    return memoryview(a).cast("B")


class Mesh:
    """Peer i holds out[j] (it dialled j) and inc[j] (j dialled it) for every other j."""

    def __init__(self, index: int, n: int):
        self.index, self.n = index, n
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=n)
        self.port = self.listener.getsockname()[1]
        self.out: dict[int, socket.socket] = {}
        self.inc: dict[int, socket.socket] = {}

    def connect(self, ports: Sequence[int]) -> None:
        for j, port in enumerate(ports):
            if j != self.index:
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(struct.pack("!I", self.index))
                self.out[j] = s
        while len(self.inc) < self.n - 1:
            s, _ = self.listener.accept()
            head = bytearray(4)
            _recv_into(s, memoryview(head))
            self.inc[struct.unpack("!I", head)[0]] = s

    def allreduce(self, vec: np.ndarray, start_at: float) -> tuple[np.ndarray, float]:
        """Butterfly all-reduce (sum) of `vec` starting at wall time `start_at`; (result, seconds from
        `start_at` until this peer has the whole result)."""
        n, i = self.n, self.index
        bounds = [len(vec) * k // n for k in range(n + 1)]

        def part(a: np.ndarray, k: int) -> np.ndarray:
            return a[bounds[k] : bounds[k + 1]]

        others = [j for j in range(n) if j != i]
        received = {j: np.zeros(bounds[i + 1] - bounds[i], dtype=vec.dtype) for j in others}
        result = np.zeros_like(vec)
        for buffer in [*received.values(), result]:
            buffer.fill(1)  # touch the pages now: this is the network's lower bound, not the kernel's
        _sleep_until(start_at)
        # reduce-scatter: my part j goes to j; everyone's part i comes to me
        _run_threads(
            [lambda j=j: self.out[j].sendall(_bytes(part(vec, j))) for j in others]
            + [lambda j=j: _recv_into(self.inc[j], _bytes(received[j])) for j in others]
        )
        acc = part(vec, i).copy()
        for j in others:
            acc += received[j]
        part(result, i)[:] = acc
        # all-gather: my reduced part to everyone, theirs to me (same sockets, the other direction)
        _run_threads(
            [lambda j=j: self.inc[j].sendall(_bytes(acc)) for j in others]
            + [lambda j=j: _recv_into(self.out[j], _bytes(part(result, j))) for j in others]
        )
        return result, time.time() - start_at

    def close(self) -> None:
        for s in [*self.out.values(), *self.inc.values(), self.listener]:
            with contextlib.suppress(OSError):
                s.close()


def _run_threads(fns: list[Callable[[], object]]) -> None:
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], object]) -> None:
        try:
            fn()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ---- child processes (this script re-run as `_peer` / `_holder`), JSON lines over stdin/stdout ----


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _commands():
    for line in sys.stdin:
        if line.strip():
            yield json.loads(line)


class Child(JsonChild):
    """This script re-run as ``_peer`` / ``_holder``; its stderr goes to ``<logdir>/<name>.log``."""

    def __init__(self, name: str, argv: list[str], logdir: Path):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        with open(self.log_path, "wb") as log_file:
            super().__init__([__file__, *argv], stderr=log_file)

    def wait(self, event: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no {event!r} in {timeout:.0f}s; log: {self.log_path}") from None
        if item["event"] == "exit":
            raise RuntimeError(f"{self.name} exited before {event!r}:\n{self.log_tail()}")
        if item["event"] == "error":
            raise ChildError(f"{self.name}: {item['message']}")
        if item["event"] != event:
            raise RuntimeError(f"{self.name}: expected {event!r}, got {item}")
        return item

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class ChildError(Exception):
    """A child reported a failed command (e.g. an all-reduce that failed): that run has no number."""


# ---- (1) peer process -------------------------------------------------------------------------------


class Peer:
    def __init__(self, index: int, n: int, params: int, initial: list[str]):
        from hivemind.dht import DHT

        from potluck.rounds import fixedpoint
        from potluck.updates.codec import SparseTensor, Update

        self.index, self.n = index, n
        self.dht = DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=initial or None)
        self.mesh = Mesh(index, n)
        self.state = model_state(params)
        self.layout = fixedpoint.Layout.from_state(self.state)
        self.flat32 = np.concatenate([self.state[s.name].reshape(-1) for s in self.layout.slots])
        # this peer's contribution: one dense update of weight 1 (as RoundEngine._contribution)
        rng = np.random.default_rng(SEED + 1 + index)
        tensors = tuple(
            SparseTensor(
                s.name,
                s.shape,
                np.arange(s.size, dtype=np.int64),
                rng.standard_normal(s.size, dtype=np.float32) * np.float32(1e-3),
            )
            for s in self.layout.slots
        )
        update = Update("bench", 0, "0" * 64, node_key(index), 0, 1, tensors)
        t = time.perf_counter()
        self.contribution = fixedpoint.contribution(self.layout, [(1, update)])
        self.contribution_s = time.perf_counter() - t
        self.carried = [hashlib.sha256(f"update-{index}".encode()).hexdigest()]
        self.participants = sorted(node_key(j) for j in range(n))
        self.assignment = sorted(hashlib.sha256(f"update-{j}".encode()).hexdigest() for j in range(n))
        self.digest = hashlib.sha256(b"bench-entries").hexdigest()
        self.averager: Any = None
        self.step: Any = None
        self.pre: dict[str, float] = {}
        self.packed = fixedpoint.pack(self.layout, self.contribution.q, 1)  # (c)'s float64 vector

    def maddrs(self) -> list[str]:
        addrs = [str(a) for a in self.dht.get_visible_maddrs()]
        return [a for a in addrs if "/127.0.0.1/" in a] or addrs

    # -- (a) and (b): prepare (what the engine does before its scheduled time), group, trigger --

    def prepare(self, kind: str, prefix: str) -> dict[str, float]:
        import torch
        from hivemind.averaging import DecentralizedAverager

        from potluck.engine.allreduce import ALLREDUCE_TIMEOUT_S, MATCHMAKING_S
        from potluck.engine.averager import CanonicalAverager, next_power_of_two
        from potluck.rounds import fixedpoint

        pre: dict[str, float] = {}
        t = time.perf_counter()
        if kind == "canonical":
            self.sentinel = fixedpoint.new_sentinel()
            vector = torch.from_numpy(fixedpoint.pack(self.layout, self.contribution.q, self.sentinel))
            pre["pack_s"] = time.perf_counter() - t
            cls, extra = CanonicalAverager, {"min_vector_size": fixedpoint.ROW}
        else:
            vector = torch.from_numpy(self.flat32.copy())
            cls, extra = DecentralizedAverager, {}
        t = time.perf_counter()
        self.averager = cls(
            [vector],
            self.dht,
            start=False,
            prefix=prefix,
            target_group_size=next_power_of_two(self.n),
            min_group_size=self.n,
            min_matchmaking_time=MATCHMAKING_S,
            request_timeout=MATCHMAKING_S / 2,
            allreduce_timeout=ALLREDUCE_TIMEOUT_S,
            allow_state_sharing=False,
            **extra,
        )
        del vector
        self.averager.run_in_background(await_ready=False)
        self.averager.wait_until_ready(10)
        pre["averager_start_s"] = time.perf_counter() - t
        self.gather = None
        if kind == "canonical":
            t = time.perf_counter()
            self.gather = {
                "digest": self.digest,
                "sentinel": self.sentinel,
                "checksum": str(fixedpoint.checksum(self.contribution.q)),
                "carried": self.carried,
                "weight": self.contribution.weight,
                "node": node_key(self.index),
            }
            pre["checksum_s"] = time.perf_counter() - t
        self.pre = pre
        return pre

    def group(self, scheduled: float) -> float:
        """step() as the engine calls it, but held before the all-reduce until trigger(); seconds spent."""
        t = time.perf_counter()
        self.step = self.averager.step(
            gather=self.gather,
            weight=1.0,
            scheduled_time=scheduled,
            timeout=scheduled - time.time() + 15.0,
            allow_retries=False,
            require_trigger=True,
            wait=False,
        )
        from hivemind.averaging.control import AveragingStage

        deadline = time.time() + (scheduled - time.time()) + 15.0
        while self.step.stage != AveragingStage.AWAITING_TRIGGER:
            if self.step.done():
                self.step.result()  # raises the failure
                raise RuntimeError("the step finished before the all-reduce was triggered")
            if time.time() > deadline:
                raise TimeoutError("no group formed")
            time.sleep(0.005)
        return time.perf_counter() - t

    def abort(self) -> None:
        if self.step is not None and not self.step.done():
            with contextlib.suppress(Exception):
                self.step.cancel()
        self._shutdown()

    def _shutdown(self) -> float:
        from potluck.engine.averager import shutdown_averager

        t = time.perf_counter()
        if self.averager is not None:
            shutdown_averager(self.averager)
        self.averager, self.step = None, None
        return time.perf_counter() - t

    def trigger(self, kind: str, at: float) -> dict[str, Any]:
        _sleep_until(at)
        t0 = time.time()
        self.step.allow_allreduce()
        try:
            gathered = self.step.result()
        except BaseException:
            self._shutdown()
            raise
        t_step = time.time()
        out: dict[str, Any] = {"start_lag_s": t0 - at, "step_s": t_step - at}
        if kind == "canonical":
            try:
                out.update(self._finish_canonical(gathered))
            finally:
                out["shutdown_s"] = self._shutdown()
            out.update(self._next_version())
        else:
            out["shutdown_s"] = self._shutdown()
        out["result_s"] = time.time() - at
        return out

    def _finish_canonical(self, gathered: dict[Any, Any]) -> dict[str, Any]:
        """AllReduce._allreduce (engine/allreduce.py) after step(): checks, copy, unpack."""
        from potluck.engine.allreduce import checked_gather
        from potluck.rounds import fixedpoint

        t = time.perf_counter()
        if not gathered:
            raise RuntimeError("no group formed")
        peers = [checked_gather(p) for p in gathered.values()]
        if sorted(p["node"] for p in peers) != self.participants:
            raise RuntimeError(f"group of {len(peers)} is not the {self.n} participants")
        if any(p.get("digest") != self.digest for p in peers):
            raise RuntimeError("participants derived the assignment from different entries")
        if sorted(uid for p in peers for uid in p["carried"]) != self.assignment:
            raise RuntimeError("carried updates differ from the assignment")
        out: dict[str, Any] = {"checks_s": time.perf_counter() - t}
        with self.averager.get_tensors() as tensors:
            averaged = _timed(out, "copy", lambda: tensors[0].numpy().copy())
        sentinels = sum(int(p["sentinel"]) for p in peers)
        checksums = sum(int(p["checksum"]) for p in peers)
        self.summed = _timed(
            out, "unpack", lambda: fixedpoint.unpack(self.layout, averaged, self.n, sentinels, checksums)
        )
        self.total_weight = sum(int(p["weight"]) for p in peers)
        return out

    def _next_version(self) -> dict[str, Any]:
        from potluck.hashing import tensor_hashes, version_hash_of
        from potluck.rounds import fixedpoint

        out: dict[str, Any] = {}
        new_state = _timed(
            out,
            "next_version",
            lambda: fixedpoint.next_version(self.state, self.layout, self.summed, self.total_weight, 1.0),
        )
        hashes = _timed(out, "hash", lambda: tensor_hashes(new_state))
        out["version"] = version_hash_of(hashes)  # = version_hash(new_state), without hashing twice
        self.summed = None
        return out

    # -- (d) dense: potluck's own reduce-scatter (exchange/dense.py) between real SwarmHosts --

    def dense_setup(self, workdir: str) -> dict[str, Any]:
        """A SwarmHost (own p2pd) and a DenseService on an event loop in a thread of this process."""
        from potluck.exchange.dense import DenseService
        from potluck.identity import P2P_KEY_FILE, load_or_create
        from potluck.swarm.host import SwarmHost

        root = Path(workdir) / f"dense{self.index}"
        root.mkdir(parents=True)
        self.identity = load_or_create(root)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def start() -> tuple[str, list[str]]:
            self.host = SwarmHost(identity_path=root / P2P_KEY_FILE, listen=["/ip4/127.0.0.1/tcp/0"])
            await self.host.start()
            self.dense = DenseService(self.host, "bench")
            await self.dense.start()
            return self.host.peer_id, await self.host.visible_addrs()

        peer_id, addrs = asyncio.run_coroutine_threadsafe(start(), self.loop).result(60)
        return {"peer_id": peer_id, "addrs": addrs, "key": self.identity.public_key.hex()}

    def dense_peers(self, peers: list[dict[str, Any]]) -> None:
        self.dense_members = sorted(peers, key=lambda p: p["key"])  # participants in key order
        self.dense_attempt = 0

    def dense_prepare(self) -> dict[str, float]:
        """(d) before the start, as (a) packs: this peer's parts encoded and offered, its buffers made."""
        from potluck.exchange.dense import prepare
        from potluck.rounds import dense

        me = [bytes.fromhex(p["key"]) for p in self.dense_members].index(self.identity.public_key)
        bounds = dense.range_bounds(self.layout.length, len(self.dense_members))
        self.dense_attempt += 1
        key = dense.attempt_key("bench", 0, self.dense_attempt)
        coroutine = prepare(self.dense, key, me, bounds, self.contribution.q)
        before: dict[str, float] = {}
        self.dense_ready = _timed(
            before, "prepare", lambda: asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)
        )
        return before

    def dense_run(self, at: float) -> dict[str, Any]:
        """(d) from the common start ``at``: the exact int64 sum of the 4 contributions on this peer (every
        range's bytes hashed as received and checked; every merged range's header signed and verified),
        then V_{r+1} and its hash as in (a)."""
        from potluck.exchange.dense import reduce_scatter
        from potluck.rounds import dense, slices

        members, me_key = self.dense_members, self.identity.public_key
        keys = [bytes.fromhex(p["key"]) for p in members]
        me = keys.index(me_key)
        peers = [None if j == me else (p["peer_id"], p["addrs"]) for j, p in enumerate(members)]
        bounds = dense.range_bounds(self.layout.length, len(members))
        fields = ("bench", 0, self.dense_attempt, "0" * 64, self.digest)
        ids = tuple(self.assignment)

        def sign(lo: int, hi: int, digest: bytes) -> bytes:
            return slices.SliceHeader(*fields, me_key, lo, hi, ids, digest).sign(self.identity)

        def check_header(j: int, data: bytes, digest: bytes, values: Any) -> None:
            h = slices.SliceHeader.verify(data)
            if (h.run, h.round, h.attempt, h.parent, h.digest, h.reducer, h.lo, h.hi, h.updates, h.root) != (
                *fields,
                keys[j],
                *bounds[j],
                ids,
                digest,
            ):
                raise RuntimeError(f"range {j}: a header for another attempt or sum")

        q = self.contribution.q
        key = dense.attempt_key("bench", 0, self.dense_attempt)
        _sleep_until(at)
        t0, (cpu0, sys0) = time.time(), _cpu_times()
        phases: dict[str, float] = {}
        coroutine = reduce_scatter(
            self.dense,
            key,
            me,
            peers,
            bounds,
            q,
            sign,
            check_header,
            None,
            time.time() + 60,
            phases,
            self.dense_ready,
        )
        self.summed = asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(90)
        out: dict[str, Any] = {"start_lag_s": t0 - at, "step_s": time.time() - at}
        cpu1, sys1 = _cpu_times()
        out["step_cpu_s"], out["step_sys_s"] = cpu1 - cpu0, sys1 - sys0  # this process, all its threads
        out.update({f"{phase}_s": seconds for phase, seconds in phases.items()})
        self.total_weight = len(members)
        out.update(self._next_version())
        out["result_s"] = time.time() - at
        return out

    def dense_stop(self) -> None:
        if getattr(self, "host", None) is not None:
            asyncio.run_coroutine_threadsafe(self.host.stop(), self.loop).result(30)
            self.host = None

    # -- (c) --

    def tcp(self, dtype: str, at: float) -> tuple[float, float]:
        vec = self.packed if dtype == "f8" else self.flat32
        cpu0, _ = _cpu_times()
        _, seconds = self.mesh.allreduce(vec, at)
        return seconds, _cpu_times()[0] - cpu0


def peer_main(index: int, n: int, params: int, initial: list[str]) -> None:
    t = time.perf_counter()
    peer = Peer(index, n, params, initial)
    _emit(
        "ready",
        maddrs=peer.maddrs(),
        tcp_port=peer.mesh.port,
        setup_s=time.perf_counter() - t,
        contribution_s=peer.contribution_s,
        packed_length=peer.layout.packed_length,
    )
    for cmd in _commands():
        try:
            op = cmd["cmd"]
            if op == "mesh":
                peer.mesh.connect(cmd["ports"])
                _emit("mesh")
            elif op == "prepare":
                _emit("prepared", **peer.prepare(cmd["kind"], cmd["prefix"]))
            elif op == "group":
                _emit("grouped", matchmaking_s=peer.group(cmd["scheduled"]))
            elif op == "abort":
                peer.abort()
                _emit("aborted")
            elif op == "trigger":
                _emit("done", **peer.trigger(cmd["kind"], cmd["at"]))
            elif op == "tcp":
                seconds, cpu = peer.tcp(cmd["dtype"], cmd["at"])
                _emit("tcp_done", seconds=seconds, cpu_s=cpu)
            elif op == "dense_setup":
                _emit("dense_up", **peer.dense_setup(cmd["workdir"]))
            elif op == "dense_peers":
                peer.dense_peers(cmd["peers"])
                _emit("dense_peers")
            elif op == "dense_prepare":
                _emit("dense_prepared", **peer.dense_prepare())
            elif op == "dense":
                _emit("done", **peer.dense_run(cmd["at"]))
            elif op == "exit":
                break
        except Exception as e:
            with contextlib.suppress(Exception):
                peer.abort()
            _emit("error", message=f"{type(e).__name__}: {e}")
    peer.mesh.close()
    with contextlib.suppress(Exception):
        peer.abort()
    with contextlib.suppress(Exception):
        peer.dense_stop()
    peer.dht.shutdown()


# ---- (1) driver -------------------------------------------------------------------------------------


def allreduce_bench(
    params: int, n: int, repeats: int, logdir: Path, workdir: Path, kinds: Sequence[str] = KINDS
) -> dict[str, Any]:
    peers: list[Child] = []
    try:
        t = time.monotonic()
        peers.append(Child("peer0", ["_peer", "0", str(n), str(params)], logdir))
        first = peers[0].wait("ready")
        peers += [
            Child(f"peer{i}", ["_peer", str(i), str(n), str(params), *first["maddrs"][:1]], logdir)
            for i in range(1, n)
        ]
        ready = [first] + [p.wait("ready") for p in peers[1:]]
        log(f"allreduce: {n} peers up in {time.monotonic() - t:.1f}s (state, contribution, DHT)")
        ports = [r["tcp_port"] for r in ready]
        for p in peers:
            p.send(cmd="mesh", ports=ports)
        for p in peers:
            p.wait("mesh")
        packed_length = ready[0]["packed_length"]
        if "dense" in kinds:  # (d): a SwarmHost and a DenseService per peer, told each other's addresses
            for p in peers:
                p.send(cmd="dense_setup", workdir=str(workdir))
            hosts = [p.wait("dense_up") for p in peers]
            for p in peers:
                p.send(
                    cmd="dense_peers", peers=[{k: h[k] for k in ("peer_id", "addrs", "key")} for h in hosts]
                )
            for p in peers:
                p.wait("dense_peers")
            # warm-up, not counted: the hosts' first libp2p dials (a node's peers are connected already)
            # and each process's first touch of its buffers' pages
            log(f"dense warm-up: {_fmt(_dense_run(peers), ('step_s', 'result_s'))}")
        runs: dict[str, list[dict[str, Any]]] = {
            "canonical": [], "plain": [], "dense": [], "tcp_f8": [], "tcp_f4": []
        }  # fmt: skip
        failures: dict[str, list[str]] = {"canonical": [], "plain": [], "dense": []}
        for r in range(repeats):
            for kind in kinds:  # alternate, so drift of the machine hits all alike
                try:
                    if kind == "dense":
                        runs[kind].append(_dense_run(peers))
                        log(f"run {r + 1}: {kind:9s} {_fmt(runs[kind][-1], ('step_s', 'result_s'))}")
                        continue
                    runs[kind].append(_averaging_run(peers, kind, f"bench_{os.getpid()}_{kind}_{r}"))
                    log(f"run {r + 1}: {kind:9s} {_fmt(runs[kind][-1], ('step_s', 'result_s'))}")
                except (ChildError, TimeoutError) as e:
                    failures[kind].append(str(e))
                    log(f"run {r + 1}: {kind} FAILED: {e}")
            for dtype in ("f8", "f4"):
                at = time.time() + TRIGGER_LEAD_S + 0.5  # the f8 vector is packed before the start
                for p in peers:
                    p.send(cmd="tcp", dtype=dtype, at=at)
                done = [p.wait("tcp_done") for p in peers]
                seconds = [d["seconds"] for d in done]
                runs[f"tcp_{dtype}"].append(
                    {"seconds": max(seconds), "cpu_s": statistics.median(d["cpu_s"] for d in done)}
                )
                log(f"run {r + 1}: tcp {dtype}  {max(seconds):.3f}s")
        for p in peers:
            p.send(cmd="exit")
    finally:
        for p in peers:
            p.close()
        for p in peers:
            p.join()
    return _allreduce_report(params, n, packed_length, ready, runs, failures)


def _dense_run(peers: list[Child]) -> dict[str, Any]:
    for p in peers:
        p.send(cmd="dense_prepare")
    pre = [p.wait("dense_prepared") for p in peers]
    at = time.time() + TRIGGER_LEAD_S
    for p in peers:
        p.send(cmd="dense", at=at)
    done = [p.wait("done") for p in peers]
    return {
        "step_s": max(d["step_s"] for d in done),
        "result_s": max(d["result_s"] for d in done),
        "start_lag_max_s": max(d["start_lag_s"] for d in done),
        "before": {k: statistics.median(x[k] for x in pre) for k in pre[0] if k != "event"},
        "after": {
            k: statistics.median(d[k] for d in done)
            for k in done[0]
            if k.endswith("_s") and k not in ("step_s", "result_s", "start_lag_s")
        },
        "versions": sorted({d["version"] for d in done}),
    }


def _averaging_run(peers: list[Child], kind: str, prefix: str) -> dict[str, Any]:
    from potluck.engine.allreduce import MATCHMAKING_S

    for p in peers:
        p.send(cmd="prepare", kind=kind, prefix=prefix)
    pre = [p.wait("prepared") for p in peers]
    scheduled = time.time() + MATCHMAKING_S
    for p in peers:
        p.send(cmd="group", scheduled=scheduled)
    grouped, error = [], None
    for p in peers:
        try:
            grouped.append(p.wait("grouped", timeout=MATCHMAKING_S + 30))
        except ChildError as e:
            error = error or e
    if error is not None:
        for p in peers:
            p.send(cmd="abort")
        for p in peers:
            with contextlib.suppress(ChildError):
                p.wait("aborted")
        raise error
    at = time.time() + TRIGGER_LEAD_S
    for p in peers:
        p.send(cmd="trigger", kind=kind, at=at)
    done, error = [], None
    for p in peers:
        try:
            done.append(p.wait("done"))
        except ChildError as e:
            error = error or e
    if error is not None:
        raise error
    out: dict[str, Any] = {
        "step_s": max(d["step_s"] for d in done),
        "result_s": max(d["result_s"] for d in done),
        "start_lag_max_s": max(d["start_lag_s"] for d in done),
        # phases: the median over peers of each peer's own time (matchmaking: the slowest peer's)
        "before": {"matchmaking_s": max(g["matchmaking_s"] for g in grouped)},
        "after": {},
    }
    for key in pre[0]:
        if key != "event":
            out["before"][key] = statistics.median(x[key] for x in pre)
    for key in done[0]:
        if key.endswith("_s") and key not in ("step_s", "result_s", "start_lag_s"):
            out["after"][key] = statistics.median(d[key] for d in done)
    if kind == "canonical":
        out["versions"] = sorted({d["version"] for d in done})
    return out


def _allreduce_report(
    params: int,
    n: int,
    packed_length: int,
    ready: list[dict[str, Any]],
    runs: dict[str, list[dict[str, Any]]],
    failures: dict[str, list[str]],
) -> dict[str, Any]:
    f4_bytes, f8_bytes = params * 4, packed_length * 8

    def moved(nbytes: int) -> int:  # sent (and received) per peer, reduce-scatter + all-gather
        return 2 * (n - 1) * nbytes // n

    out: dict[str, Any] = {
        "peers": n,
        "timing": (
            "every peer forms its group first (step(require_trigger=True)); all start the all-reduce at "
            "one wall-clock instant T; step_s/result_s/tcp are T -> the last peer done; before_step and "
            "after_step phases are medians over peers of each peer's own time, *_sys_s its kernel CPU time"
        ),
        "vector": {
            "float32_bytes": f4_bytes,
            "packed_float64_bytes": f8_bytes,
            "packed_length": packed_length,
            "butterfly_bytes_sent_per_peer_f64": moved(f8_bytes),
            "butterfly_bytes_sent_per_peer_f32": moved(f4_bytes),
        },
        "peer_setup": {
            "contribution_s": round(statistics.median(r["contribution_s"] for r in ready), 3),
            "startup_s_max": round(max(r["setup_s"] for r in ready), 2),
        },
    }
    for kind in ("canonical", "plain", "dense"):
        results = runs[kind]
        entry: dict[str, Any] = {"runs": len(results), "failed": len(failures[kind])}
        if failures[kind]:
            entry["errors"] = failures[kind]
        if results:
            entry["step_s"] = _med(results, "step_s")
            if kind != "plain":
                entry["result_s"] = _med(results, "result_s")
            entry["step_s_all"] = [round(x["step_s"], 3) for x in results]
            if kind != "plain":
                entry["result_s_all"] = [round(x["result_s"], 3) for x in results]
                entry["identical"] = all(len(x["versions"]) == 1 for x in results)
                entry["versions_differ_runs"] = sum(len(x["versions"]) != 1 for x in results)
            entry["start_lag_max_s"] = _med(results, "start_lag_max_s")
            for when in ("before", "after"):
                entry[f"{when}_step"] = {k: _med([x[when] for x in results], k) for k in results[0][when]}
            entry["step_MBps_per_peer"] = round(
                moved(f8_bytes if kind == "canonical" else f4_bytes) / entry["step_s"] / 1e6, 1
            )
        out[kind] = entry
    canonical_versions = {v for x in runs["canonical"] for v in x["versions"]}
    dense_versions = {v for x in runs["dense"] for v in x["versions"]}
    if canonical_versions and dense_versions:  # the same inputs every run: one version, both paths
        out["dense"]["equal_to_canonical"] = canonical_versions == dense_versions and len(dense_versions) == 1
    tcp = {}
    for dtype, nbytes in (("f8", f8_bytes), ("f4", f4_bytes)):
        s = _med(runs[f"tcp_{dtype}"], "seconds")
        tcp[f"{dtype}_s"] = s
        tcp[f"{dtype}_s_all"] = [round(x["seconds"], 3) for x in runs[f"tcp_{dtype}"]]
        tcp[f"{dtype}_MBps_per_peer"] = round(moved(nbytes) / s / 1e6, 1)
        tcp[f"{dtype}_cpu_s"] = _med(runs[f"tcp_{dtype}"], "cpu_s")  # per peer, median: sockets' CPU
    out["tcp"] = tcp
    c, p = out["canonical"], out["plain"]
    ratios: dict[str, float] = {}
    if "step_s" in c and "step_s" in p:
        ratios["canonical_step_over_plain_step"] = round(c["step_s"] / p["step_s"], 2)
        ratios["canonical_result_over_plain_step"] = round(c["result_s"] / p["step_s"], 2)
    if "step_s" in c:
        ratios["canonical_step_over_tcp_f8"] = round(c["step_s"] / tcp["f8_s"], 2)
    if "step_s" in p:
        ratios["plain_step_over_tcp_f4"] = round(p["step_s"] / tcp["f4_s"], 2)
    d = out["dense"]
    if "step_s" in d:  # the useful bytes: the float32 model's, as tcp f4 moves them
        ratios["dense_step_over_tcp_f4"] = round(d["step_s"] / tcp["f4_s"], 2)
        ratios["dense_result_over_tcp_f4"] = round(d["result_s"] / tcp["f4_s"], 2)
    if "result_s" in c:
        ratios["canonical_result_over_tcp_f4"] = round(c["result_s"] / tcp["f4_s"], 2)
    ratios["tcp_f8_over_tcp_f4"] = round(tcp["f8_s"] / tcp["f4_s"], 2)
    out["ratios"] = ratios
    return out


# ---- (2) holder process -----------------------------------------------------------------------------


def holder_main(index: int, params: int, workdir: str, rate: int) -> None:
    from potluck.exchange.state import StateService
    from potluck.identity import P2P_KEY_FILE, load_or_create
    from potluck.store.versions import VersionStore
    from potluck.swarm.host import SwarmHost

    root = Path(workdir) / f"holder{index}"
    (root / "node").mkdir(parents=True)
    state = model_state(params)
    store = VersionStore(root / "versions")
    version = store.put(state)
    server = socket.create_server(("127.0.0.1", 0), backlog=8)
    if rate:  # this holder's uplink, for the baseline as for the bulk channel (inherited by accepted sockets)
        server.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, rate)
    threading.Thread(target=_serve_raw, args=(server, state), daemon=True).start()

    async def run() -> None:
        load_or_create(root / "node")
        host = SwarmHost(identity_path=root / "node" / P2P_KEY_FILE, listen=["/ip4/127.0.0.1/tcp/0"])
        await host.start()
        try:
            service = StateService(host, store, lambda run_id: None)
            await service.start()
            if rate:
                assert service.bulk is not None
                service.bulk.pace(rate)
            addrs = await host.visible_addrs()
            port = server.getsockname()[1]
            _emit("ready", peer_id=host.peer_id, addrs=addrs, tcp_port=port, version=version)
            await asyncio.to_thread(sys.stdin.read)  # serve until the driver closes stdin
        finally:
            await host.stop()

    asyncio.run(run())


def _serve_raw(server: socket.socket, state: dict[str, np.ndarray]) -> None:
    """Baseline server: a request is a length-prefixed tensor name, the reply its size and raw bytes."""

    def handle(conn: socket.socket) -> None:
        with conn:
            head = bytearray(2)
            while True:
                try:
                    _recv_into(conn, memoryview(head))
                except ConnectionError:
                    return
                name = bytearray(struct.unpack("!H", head)[0])
                _recv_into(conn, memoryview(name))
                data = _bytes(np.ascontiguousarray(state[name.decode()]))
                conn.sendall(struct.pack("!Q", len(data)))
                conn.sendall(data)

    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


# ---- (2) driver: the newcomer ------------------------------------------------------------------------


def sync_bench(params: int, repeats: int, logdir: Path, workdir: Path, rate: int = 0) -> dict[str, Any]:
    """Unpaced (rate 0): bulk, p2p and tcp. Paced: every holder's sends capped at ``rate`` bytes/s
    (kernel TCP pacing, as a real uplink would cap them): bulk and tcp only, p2pd cannot be paced."""
    holders: list[Child] = []
    tag = f"-paced{rate}" if rate else ""
    work = workdir / f"sync{tag}"
    work.mkdir()
    try:
        t = time.monotonic()
        holders = [
            Child(f"holder{i}{tag}", ["_holder", str(i), str(params), str(work), str(rate)], logdir)
            for i in range(3)
        ]
        info = [h.wait("ready") for h in holders]
        log(f"sync: 3 holders up in {time.monotonic() - t:.1f}s")
        if len({x["version"] for x in info}) != 1:
            raise RuntimeError("holders stored different versions")
        return asyncio.run(_newcomer(params, repeats, info, work, rate))
    finally:
        for h in holders:
            h.close()
        for h in holders:
            h.join()


async def _newcomer(
    params: int, repeats: int, info: list[dict[str, Any]], workdir: Path, rate: int
) -> dict[str, Any]:
    from potluck.exchange.state import StateService
    from potluck.hashing import tensor_hashes, version_hash
    from potluck.identity import P2P_KEY_FILE, load_or_create
    from potluck.store.versions import VersionStore
    from potluck.swarm.host import SwarmHost

    state = model_state(params)
    version, hashes = info[0]["version"], tensor_hashes(state)
    nbytes = sum(a.nbytes for a in state.values())
    sizes = {name: a.nbytes for name, a in state.items()}
    del state
    (workdir / "newcomer").mkdir()
    load_or_create(workdir / "newcomer")
    host = SwarmHost(identity_path=workdir / "newcomer" / P2P_KEY_FILE, listen=["/ip4/127.0.0.1/tcp/0"])
    await host.start()
    try:
        service = StateService(host, VersionStore(workdir / "newcomer-versions"), lambda run_id: None)
        await service.start()
        holders = [(x["peer_id"], list(x["addrs"])) for x in info]

        async def sync(k: int, mode: str) -> float:
            service.mode = mode
            before = service.stats.bytes_direct
            t = time.perf_counter()
            got = await service.download(version, hashes, holders[:k])
            seconds = time.perf_counter() - t
            if version_hash(got) != version:
                raise RuntimeError("downloaded state does not hash to the version")
            if (service.stats.bytes_direct - before == nbytes) != (mode == "bulk"):
                raise RuntimeError(f"{mode} sync did not take the path it measures")
            return seconds

        raw = _RawClients([x["tcp_port"] for x in info], sizes)
        modes = {"bulk": "bulk"} if rate else {"bulk": "bulk", "p2p": "pieces", "p2p_whole": "whole"}
        kinds = (*modes, "tcp")
        try:
            # warm-up, not counted: connections, every holder loads the version into its cache
            for mode in modes.values():
                await sync(3, mode)
            raw.fetch(3)
            runs: dict[str, list[float]] = {f"{kind}_{k}": [] for kind in kinds for k in (1, 3)}
            for r in range(repeats):
                for k in (1, 3):
                    for kind, mode in modes.items():
                        runs[f"{kind}_{k}"].append(await sync(k, mode))
                    runs[f"tcp_{k}"].append(await asyncio.to_thread(raw.fetch, k))
                log(f"sync run {r + 1}: " + " ".join(f"{key}={v[-1]:.3f}s" for key, v in runs.items()))
        finally:
            raw.close()
    finally:
        await host.stop()
    out: dict[str, Any] = {
        "bytes": nbytes,
        "tensors": len(sizes),
        "holders_as": "separate processes (python + p2pd each); the newcomer is this driver process",
    }
    for key, values in runs.items():
        s = statistics.median(values)
        out[key] = {
            "s": round(s, 3),
            "MBps": round(nbytes / s / 1e6, 1),
            "s_all": [round(v, 3) for v in values],
        }
    out["ratios"] = {
        f"{kind}_{k}_over_tcp_{k}": round(out[f"{kind}_{k}"]["s"] / out[f"tcp_{k}"]["s"], 2)
        for kind in kinds
        if kind != "tcp"
        for k in (1, 3)
    }
    for kind in kinds:
        out["ratios"][f"speedup_3_holders_{kind}"] = round(out[f"{kind}_1"]["s"] / out[f"{kind}_3"]["s"], 2)
    if rate:
        out["holder_rate_Bps"] = rate
    return out


class _RawClients:
    """The baseline newcomer: one connection per holder, tensors pulled from a shared queue."""

    def __init__(self, ports: list[int], sizes: dict[str, int]):
        self.socks = [socket.create_connection(("127.0.0.1", port)) for port in ports]
        self.sizes = sizes

    def fetch(self, k: int) -> float:
        names: queue.Queue[str] = queue.Queue()
        for name in sorted(self.sizes):
            names.put(name)
        got: dict[str, np.ndarray] = {}

        def worker(sock: socket.socket) -> None:
            head = bytearray(8)
            while True:
                try:
                    name = names.get_nowait()
                except queue.Empty:
                    return
                encoded = name.encode()
                sock.sendall(struct.pack("!H", len(encoded)) + encoded)
                _recv_into(sock, memoryview(head))
                size = struct.unpack("!Q", head)[0]
                buf = np.empty(size, dtype=np.uint8)
                _recv_into(sock, memoryview(buf))
                got[name] = buf

        t = time.perf_counter()
        _run_threads([lambda s=s: worker(s) for s in self.socks[:k]])
        seconds = time.perf_counter() - t
        if {name: a.nbytes for name, a in got.items()} != self.sizes:
            raise RuntimeError("baseline download incomplete")
        return seconds

    def close(self) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


# ---- driver -----------------------------------------------------------------------------------------


def _med(results: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(x[key] for x in results), 3)


def _fmt(result: dict[str, Any], keys: Sequence[str]) -> str:
    return " ".join(f"{k}={result[k]:.3f}" for k in keys if k in result)


def _machine() -> dict[str, Any]:
    import hivemind
    import torch

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "hivemind": hivemind.__version__,
        "numpy": np.__version__,
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_peer"]:  # child modes, see peer_main / holder_main
        peer_main(int(argv[1]), int(argv[2]), int(argv[3]), argv[4:])
        return 0
    if argv[:1] == ["_holder"]:
        holder_main(int(argv[1]), int(argv[2]), argv[3], int(argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=25_000_000, help="model parameters (default 25M)")
    parser.add_argument("--peers", type=int, default=4, help="peers in the all-reduce (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind; medians (default 3)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--holder-rate",
        type=float,
        default=250.0,
        help="sync_paced: each holder's send rate cap in MB/s (default 250)",
    )
    parser.add_argument(
        "--parts", default="allreduce,sync,sync_paced", help="comma-separated parts to run (default all)"
    )
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"allreduce: which of {', '.join(KINDS)} (tcp always)"
    )
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not set(kinds) <= set(KINDS):
        parser.error(f"--kinds: choose from {', '.join(KINDS)}")
    if args.params < TENSORS or args.peers < 2 or args.repeats < 1:
        parser.error(f"need --params >= {TENSORS}, --peers >= 2, --repeats >= 1")

    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "rounds",
        "machine": _machine(),
        "params": args.params,
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory(prefix="potluck-bench-rounds-") as tmp:
        logdir = Path(tmp) / "logs"
        logdir.mkdir()
        sections: dict[str, Callable[[], dict[str, Any]]] = {
            "allreduce": lambda: allreduce_bench(
                args.params, args.peers, args.repeats, logdir, Path(tmp), kinds
            ),
            "sync": lambda: sync_bench(args.params, args.repeats, logdir, Path(tmp)),
            "sync_paced": lambda: sync_bench(
                args.params, args.repeats, logdir, Path(tmp), int(args.holder_rate * 1e6)
            ),
        }
        failed = False
        wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
        unknown = [p for p in wanted if p not in sections]
        if unknown or not wanted:
            parser.error(f"unknown part(s) {unknown or wanted}: choose from {', '.join(sections)}")
        for name, section in sections.items():
            if name not in wanted:
                continue
            try:
                result[name] = section()
            except Exception as e:  # keep the other section's numbers; the exit status says it failed
                failed = True
                result[name] = {"error": f"{type(e).__name__}: {e}"}
                log(f"{name} FAILED:\n{traceback.format_exc()}")
                for path in sorted(logdir.glob("*.log")):
                    tail = path.read_text(errors="replace").splitlines()[-15:]
                    log(f"--- {path.name} ---\n" + "\n".join(tail))
    result["total_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
