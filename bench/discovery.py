"""Discovery and control-API latency of potluck nodes, next to plain hivemind measured in the same run.

(a) discovery: launch N `potluck run` processes on 127.0.0.1 (the first, then the rest bootstrapping
    from it, as LocalSwarm does) and time from the first launch until every node has seen all N-1
    peers. Baseline: N plain hivemind DHT peers, each in its own process started the same way, each
    storing one subkey under a shared key and polling get(latest=True) at potluck's view interval
    until it sees N-1 others. Both include process start (imports); that part is reported on its own
    too: the time until a node's control API answers (potluck) or its DHT is up (baseline).
(b) control API: GetStatus latency at a paced rate against one node of a 3-node swarm, and the
    standard grpc.health.v1 Health.Check on the same server, channel and schedule (interleaved
    half a period apart) as the baseline.
(c) observing: against one node of a 3-node run with rounds going (the toy task), GetStatus and
    Health.Check as in (b) with /metrics and the dashboard off, then on; with them on, also a scrape
    of /metrics and a poll of the dashboard's /api/state (what Prometheus and the page do).

    python bench/discovery.py [--sizes 2,4,8] [--repeats K] [--rate 100] [--seconds 10] [--out FILE]
        [--parts discovery,rpc,observe]

Progress goes to stderr, one JSON object to stdout (and to --out).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jsonchild import JsonChild  # bench/jsonchild.py: this script's folder is on the path
from placement import make_updates  # bench/placement.py

from potluck.identity import NodeIdentity
from potluck.localswarm import LocalNode, LocalSwarm, next_collecting_round, wait_for
from potluck.observe.serve import read_dashboard_url
from potluck.rpc.client import ControlClient
from potluck.runfiles import write_run
from potluck.store.versions import VersionStore
from potluck.v1 import control_pb2, control_pb2_grpc

POLL_S = 0.05  # how often this process asks the potluck nodes; bounds the measurement's resolution
TIMEOUT_S = 90.0  # per phase: a run that takes longer is a failure, not a number
WARMUP_CALLS = 20


def log(message: str) -> None:
    print(f"[discovery] {message}", file=sys.stderr, flush=True)


def view_interval_s() -> float:
    """potluck's peer-view refresh interval; the baseline polls at the same pace so both wait alike."""
    from potluck.swarm.membership import Membership

    return float(inspect.signature(Membership.__init__).parameters["view_interval_s"].default)


# ---- (a) potluck discovery ----------------------------------------------------------------------------


def potluck_discovery(n: int) -> dict[str, float]:
    """Seconds from the first launch until every node has seen N-1 peers, and until each API answered."""
    with LocalSwarm() as swarm:
        clients: dict[int, ControlClient] = {}
        api_ready: dict[int, float] = {}  # node index -> seconds since its own launch
        launched: dict[int, float] = {}
        seen_all: dict[int, float] = {}  # node index -> seconds since t0 when it first saw N-1 peers
        try:
            t0 = time.monotonic()
            launched[0] = t0
            swarm.add_node(initial_peers=[])
            _poll_api(swarm.nodes[0], 0, clients, api_ready, launched)
            first = swarm.nodes[0].multiaddr()
            for i in range(1, n):
                launched[i] = time.monotonic()
                swarm.add_node(initial_peers=[first])
            deadline = time.monotonic() + TIMEOUT_S
            while len(seen_all) < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"potluck n={n}: {len(seen_all)}/{n} nodes saw everyone")
                for i, node in enumerate(swarm.nodes):
                    if i not in clients:
                        _poll_api(node, i, clients, api_ready, launched, wait=False)
                    if i in clients and i not in seen_all:
                        with contextlib.suppress(Exception):
                            if clients[i].status().peers >= n - 1:
                                seen_all[i] = time.monotonic() - t0
                time.sleep(POLL_S)
        finally:
            for client in clients.values():
                client.__exit__()
            _stop_all(swarm)
    return {
        "discovery_s": max(seen_all.values()),
        "first_ready_s": api_ready[0],
        "api_ready_median_s": statistics.median(api_ready.values()),
        "api_ready_max_s": max(api_ready.values()),
    }


def _poll_api(
    node: LocalNode,
    i: int,
    clients: dict[int, ControlClient],
    ready: dict[int, float],
    launched: dict[int, float],
    wait: bool = True,
) -> None:
    """Record when node i's control API first answers (the api file appears once it is bound)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        if node.proc is not None and node.proc.poll() is not None:
            raise RuntimeError(f"node {i} exited with {node.proc.returncode}:\n{node.log_tail()}")
        with contextlib.suppress(Exception):
            client = ControlClient(node.rpc_address, timeout=2.0)
            try:
                client.status()
            except Exception:
                client.__exit__()
                raise
            ready[i] = time.monotonic() - launched[i]
            clients[i] = client
            return
        if not wait:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"node {i}'s control API did not answer")
        time.sleep(POLL_S)


def _stop_all(swarm: LocalSwarm) -> None:
    # SIGTERM everyone first so the nodes shut down in parallel, then collect them
    for node in swarm.nodes:
        node.signal(signal.SIGTERM)
    swarm.stop()


# ---- (a) baseline: plain hivemind DHT peers -------------------------------------------------------------


def baseline_discovery(
    n: int, poll_s: float, while_up: Callable[[list[int]], None] | None = None
) -> dict[str, float]:
    """As :func:`potluck_discovery`, for plain hivemind DHT peers; also ``seen_after_last_ready_s``:
    from the last peer's DHT being up until every peer saw all the others. ``while_up`` is called with
    the peers' pids once they have, before they stop (bench/swarm.py measures their memory)."""
    key = f"bench-{os.getpid()}-{time.time_ns()}"
    peers: list[_BaselinePeer] = []
    try:
        t0 = time.time()
        peers.append(_BaselinePeer(0, n, key, [], poll_s))
        first = peers[0].wait("ready")
        initial = [a for a in first["maddrs"] if "/127.0.0.1/" in a][:1] or first["maddrs"][:1]
        peers += [_BaselinePeer(i, n, key, initial, poll_s) for i in range(1, n)]
        ready_at = [p.wait("ready")["t"] for p in peers]
        seen_at = [p.wait("seen_all")["t"] for p in peers]
        if while_up is not None:
            while_up([p.proc.pid for p in peers])
    finally:
        for p in peers:
            p.close()
        for p in peers:
            p.join()
    ready = [t - p.launched for t, p in zip(ready_at, peers, strict=True)]
    return {
        "discovery_s": max(seen_at) - t0,
        "first_ready_s": ready[0],
        "api_ready_median_s": statistics.median(ready),
        "api_ready_max_s": max(ready),
        "seen_after_last_ready_s": max(0.0, max(seen_at) - max(ready_at)),
    }


class _BaselinePeer(JsonChild):
    """A child process running `baseline_peer` (below); it reports events as JSON lines on stdout."""

    def __init__(self, index: int, n: int, key: str, initial: Sequence[str], poll_s: float):
        self.index = index
        self._seen: dict[str, dict[str, Any]] = {}
        self.launched = time.time()
        argv = [__file__, "_baseline-peer", str(n), key, str(poll_s), *initial]
        super().__init__(argv, stderr=subprocess.DEVNULL)

    def wait(self, event: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while event not in self._seen:
            try:
                item = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"baseline peer {self.index}: no {event!r} event") from None
            if item["event"] == "exit":
                raise RuntimeError(f"baseline peer {self.index} exited before {event!r}")
            self._seen[item["event"]] = item
        return self._seen[event]


def baseline_peer(n: int, key: str, poll_s: float, initial: list[str]) -> None:
    """Child: start a DHT, store one subkey under `key`, poll until N-1 others are there, then idle
    (still serving the others) until stdin closes."""
    from hivemind.dht import DHT
    from hivemind.utils import get_dht_time

    def emit(event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)

    dht = DHT(initial_peers=initial or None, start=True)
    emit("ready", maddrs=[str(a) for a in dht.get_visible_maddrs()])
    me = dht.peer_id.to_base58()
    dht.store(key, b"here", get_dht_time() + 300, subkey=me)
    while True:
        found = dht.get(key, latest=True)
        others = set(found.value) - {me} if found is not None and isinstance(found.value, dict) else set()
        if len(others) >= n - 1:
            emit("seen_all")
            break
        time.sleep(poll_s)
    sys.stdin.read()
    dht.shutdown()


# ---- (b) control-API latency ----------------------------------------------------------------------------


def rpc_latency(rate: float, seconds: float) -> dict[str, Any]:
    with LocalSwarm() as swarm:
        try:
            swarm.start(3)
            swarm.wait_all_see(2, TIMEOUT_S)
            address = swarm.nodes[0].rpc_address
            log(f"rpc: 3-node swarm up; {rate:.0f}/s of each call for {seconds:.0f}s against {address}")
            with grpc.insecure_channel(address) as channel:
                status = control_pb2_grpc.ControlServiceStub(channel).GetStatus
                health = health_pb2_grpc.HealthStub(channel).Check
                calls = {
                    "get_status": lambda: status(control_pb2.GetStatusRequest(), timeout=5),
                    "health_check": lambda: health(health_pb2.HealthCheckRequest(service=""), timeout=5),
                }
                return _paced(calls, rate, seconds)
        finally:
            _stop_all(swarm)


def _paced(calls: dict[str, Any], rate: float, seconds: float) -> dict[str, Any]:
    """Each call at `rate`/s, interleaved evenly, one at a time: an open schedule, so a slow reply
    delays the next send (counted as `late`) rather than silently lowering the rate."""
    for call in calls.values():
        for _ in range(WARMUP_CALLS):
            call()
    names = list(calls)
    step = 1.0 / (rate * len(names))
    samples: dict[str, list[float]] = {name: [] for name in names}
    late = 0
    total = round(rate * seconds) * len(names)
    start = time.perf_counter()
    for k in range(total):
        due = start + k * step
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        elif wait < -step:
            late += 1
        name = names[k % len(names)]
        t = time.perf_counter()
        calls[name]()
        samples[name].append((time.perf_counter() - t) * 1000)
    elapsed = time.perf_counter() - start
    result: dict[str, Any] = {
        "rate_per_s_each": rate,
        "seconds": round(elapsed, 2),
        "late_sends": late,
    }
    for name, ms in samples.items():
        result[name] = _summary_ms(ms)
    if "get_status" not in result:
        return result
    base = result["health_check"]
    result["ratio_p50"] = round(result["get_status"]["p50_ms"] / base["p50_ms"], 2)
    result["ratio_p99"] = round(result["get_status"]["p99_ms"] / base["p99_ms"], 2)
    return result


def _summary_ms(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"n": len(ms), "p50_ms": round(q[49], 3), "p99_ms": round(q[98], 3), "max_ms": round(max(ms), 3)}


# ---- (c) observing: /metrics and the dashboard off vs on ---------------------------------------------------

OBSERVE_ROUNDS = 3  # rounds with updates in each mode, after the latency runs
OBSERVE_FLAGS = {
    "off": ["--metrics-listen", "off", "--dashboard-listen", "off"],
    "on": ["--metrics-listen", "127.0.0.1:0", "--dashboard-listen", "127.0.0.1:0"],
}


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.read()


def observe_overhead(rate: float, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="potluck-observe-") as tmp:
        run = write_run(Path(tmp) / "run.toml", "toy", round_seconds=16.0, density=0.25)
        for mode, flags in OBSERVE_FLAGS.items():
            extra = ["--manifest", str(run.path), *flags]
            with LocalSwarm(Path(tmp) / mode, run=run.manifest.run_id, extra_args=extra) as swarm:
                try:
                    swarm.start(3)
                    swarm.wait_all_see(2, TIMEOUT_S)
                    log(f"observe {mode}: 3-node toy run up; {rate:.0f}/s of each call for {seconds:.0f}s")
                    out |= _observe_node(swarm.nodes[0], mode, rate, seconds)
                    with _watched(swarm.nodes[0] if mode == "on" else None):
                        out[mode]["rounds"] = _rounds(swarm, run.manifest, OBSERVE_ROUNDS)
                finally:
                    _stop_all(swarm)
    on, off = out["on"]["get_status"]["p99_ms"], out["off"]["get_status"]["p99_ms"]
    out["get_status_p99_on_over_off"] = round(on / off, 2)
    attempt = {m: statistics.median(r["attempt_s"] for r in out[m]["rounds"]) for m in OBSERVE_FLAGS}
    out["attempt_s_median_on_over_off"] = round(attempt["on"] / attempt["off"], 2)
    return out


@contextlib.contextmanager
def _watched(node: LocalNode | None) -> Any:
    """While the rounds run with the pages on: a scrape and a dashboard poll every second, as a
    Prometheus and an open dashboard would make (from a thread of this process)."""
    if node is None:
        yield
        return
    stop = threading.Event()
    metrics, state = _page_urls(node)

    def poll() -> None:
        while not stop.wait(1.0):
            _get(metrics)
            _get(state)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _page_urls(node: LocalNode) -> tuple[str, str]:
    """(/metrics, /api/state) of a node started with both on: the first from its log line."""
    metrics = next(
        line.split("metrics on ", 1)[1].strip()
        for line in node.log_path.read_text().splitlines()
        if "metrics on http://" in line
    )
    return metrics, f"{read_dashboard_url(node.data_dir)}api/state"


def _rounds(swarm: LocalSwarm, manifest: Any, rounds: int) -> list[dict[str, Any]]:
    """``rounds`` rounds with one update per node: how long each round's committing attempt took on
    node 0 (entries + merge + commit, GetStatus' aggregation.last_phases), and the seconds from the
    round's collecting deadline until node 0 committed it (polled every 0.1 s). Rounds run on the
    clock (16 s), so the attempt is what the pages could slow down."""
    authors = [NodeIdentity.generate() for _ in swarm.nodes]
    node = swarm.nodes[0]
    out = []
    for k in range(rounds):
        r = next_collecting_round(manifest)
        base = node.status()["version"]
        state = VersionStore(node.data_dir / "versions").get(base)
        for n, data in zip(
            swarm.nodes, make_updates(manifest, state, base, r, authors, 0.25, seed=k), strict=True
        ):
            reply = n.publish(data)
            assert reply.accepted, f"{reply.reason}: {reply.detail}"
        closes = node.status()["collecting_deadline"]
        wait_for(lambda r=r: node.status()["committed_round"] >= r, 60, f"round {r}", interval=0.1)
        done = time.time()
        phases = node.status()["aggregation"]["last_phases"]
        out.append({
            "round": r, "attempt_s": round(sum(phases.values()), 3),
            "phases_s": {k: round(v, 3) for k, v in phases.items()},
            "commit_after_close_s": round(done - closes, 3),
        })  # fmt: skip
        log(f"round {r}: {out[-1]}")
    return out


def _observe_node(node: LocalNode, mode: str, rate: float, seconds: float) -> dict[str, Any]:
    """GetStatus and Health.Check as in (b); with the pages on, then a scrape and a dashboard poll
    paced against Health.Check on their own (so the GetStatus numbers of on and off see the same load)."""
    out: dict[str, Any] = {}
    with grpc.insecure_channel(node.rpc_address) as channel:
        status = control_pb2_grpc.ControlServiceStub(channel).GetStatus
        health = health_pb2_grpc.HealthStub(channel).Check

        def check() -> Any:
            return health(health_pb2.HealthCheckRequest(service=""), timeout=5)

        calls = {
            "get_status": lambda: status(control_pb2.GetStatusRequest(), timeout=5),
            "health_check": check,
        }
        out[mode] = _paced(calls, rate, seconds)
        if mode == "on":
            metrics, state = _page_urls(node)
            pages = {"scrape": lambda: _get(metrics), "dashboard_state": lambda: _get(state)}
            out["http"] = _paced(pages | {"health_check": check}, rate, seconds)
    return out


# ---- driver ---------------------------------------------------------------------------------------------


def repeats_for(n: int, requested: int | None) -> int:
    if requested is not None:
        return requested
    return 1 if n >= 8 else 3  # an 8-node round costs ~16 processes on 2 cores: once by default


def discovery(sizes: Sequence[int], requested_repeats: int | None) -> dict[str, Any]:
    poll_s = view_interval_s()
    out: dict[str, Any] = {"baseline_poll_s": poll_s, "sizes": {}}
    keys = ("discovery_s", "first_ready_s", "api_ready_median_s", "api_ready_max_s")
    for n in sizes:
        runs: dict[str, list[dict[str, float]]] = {"potluck": [], "hivemind": []}
        for r in range(repeats_for(n, requested_repeats)):
            # alternate the two so slow drift of the machine hits both alike
            runs["potluck"].append(potluck_discovery(n))
            log(f"n={n} run {r + 1}: potluck {_fmt(runs['potluck'][-1])}")
            runs["hivemind"].append(baseline_discovery(n, poll_s))
            log(f"n={n} run {r + 1}: hivemind {_fmt(runs['hivemind'][-1])}")
        entry: dict[str, Any] = {"repeats": len(runs["potluck"])}
        for side, results in runs.items():
            entry[side] = {k: round(statistics.median(x[k] for x in results), 3) for k in keys}
            entry[side]["discovery_s_all"] = [round(x["discovery_s"], 3) for x in results]
        for k in ("discovery_s", "first_ready_s", "api_ready_median_s"):
            entry[f"ratio_{k}"] = round(entry["potluck"][k] / entry["hivemind"][k], 2)
        out["sizes"][str(n)] = entry
    return out


def _fmt(result: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in result.items())


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 2,4,8, got {text!r}") from None
    if not sizes or any(n < 2 for n in sizes):
        raise argparse.ArgumentTypeError("each size must be >= 2")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_baseline-peer"]:  # child mode, see baseline_peer
        baseline_peer(int(argv[1]), argv[2], float(argv[3]), argv[4:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=[2, 4, 8], help="swarm sizes (default 2,4,8)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per size, median reported (default 3; 1 for n >= 8)"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s of each RPC (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the RPC run (default 10)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--parts", default="discovery,rpc,observe", help="which parts to run (default discovery,rpc,observe)"
    )
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts or parts - {"discovery", "rpc", "observe"}:
        parser.error(
            f"--parts: expected a comma-separated subset of discovery,rpc,observe, got {args.parts!r}"
        )

    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "discovery",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    if "discovery" in parts:
        result["discovery"] = discovery(args.sizes, args.repeats)
    if "rpc" in parts:
        result["rpc"] = rpc_latency(args.rate, args.seconds)
    if "observe" in parts:
        result["observe"] = observe_overhead(args.rate, args.seconds)
    result["total_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
