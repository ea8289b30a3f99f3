"""Benchmark: many real nodes on one box, next to plain hivemind DHT peers measured in the same run.

    python bench/swarm.py                                  # 4, 8, 16, 24 nodes, 5 rounds each
    python bench/swarm.py --sizes 4 --rounds 2 --json swarm.json

For each size N: a toy run under ``ready`` pacing (``write_run``), N/2 keepers (``potluck run --manifest``)
and N/2 contributors (``potluck join --run``, ``--local-steps``), real processes on 127.0.0.1
(potluck.localswarm): the first keeper, then the rest at once bootstrapping from it. Measured:

* ``all_peers_seen_s``: from the moment the last node's control API answered (each node polled by a
  thread of its own every ``POLL_S``) until every node's GetStatus reports the N-1 others;
  ``api_ready_*_s``: each node's own launch to its API answering.
* rounds: after a warm-up round 0, ``--rounds`` more; ``round_s`` commit to commit on the first keeper
  (its history); ``bytes_per_node_round``: each node's TCP bytes as the kernel counts them (the
  node's own meter, potluck.swarm.traffic, run by this bench on its p2pd and on its python, which
  holds the direct sync channel's sockets), sent + received, from round 0's commit on the first
  keeper to the last one's, per round; ``conflicting_rounds``: rounds 0..last of which two nodes'
  histories hold different version hashes (the hash of the weights' bytes), read once every node holds
  them and agrees, or after ``SETTLE_S`` (a round a keeper committed alone, as quorum 1 allows, is
  replaced by the fork choice's winner when that keeper next reads the round's commits:
  ``fork_switches``, summed over the nodes, counts those switches); ``skipped_node_rounds``:
  rounds a node never held because it fell behind and caught up past them; ``agree_every_round``: no
  conflict and every node holds the same last version.
* memory once the last round committed: each node's process tree (python, p2pd and any averager)
  RSS, PSS and USS (bench/procmem.py), per role.

Baseline (``hivemind``): N plain hivemind DHT peers started the same way (bench/discovery.py's
``baseline_discovery``): time from the last peer's DHT being up until each has seen the N-1 others in
the DHT, and each peer's process-tree memory then. Progress on stderr, one JSON on stdout (``--json``:
also to a file), a plot to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import plots  # bench/plots.py: this script's folder is on the path
from discovery import baseline_discovery, view_interval_s
from procmem import comm, tree, tree_memory
from report import emit

from potluck.demo import keeper_log
from potluck.localswarm import LocalNode, LocalSwarm, wait_for
from potluck.rpc.client import ControlClient
from potluck.runfiles import write_run
from potluck.swarm.traffic import Traffic

POLL_S = 0.05
MB = 1 << 20
SETTLE_S = 60.0  # after the last round: for every node to hold rounds 0..last and agree on them


def log(message: str) -> None:
    print(f"[swarm] {message}", file=sys.stderr, flush=True)


class Watcher(threading.Thread):
    """Polls one node: when its control API first answers, and when it first reports ``want`` peers."""

    def __init__(self, node: LocalNode, launched: float, want: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.node, self.launched, self.want, self.deadline = node, launched, want, deadline
        self.api_at: float | None = None
        self.seen_at: float | None = None

    def run(self) -> None:
        client: ControlClient | None = None
        while self.seen_at is None and time.time() < self.deadline:
            if self.node.proc is not None and self.node.proc.poll() is not None:
                return
            with contextlib.suppress(Exception):
                client = client or ControlClient(self.node.rpc_address, timeout=2.0)
                peers = client.status().peers
                self.api_at = self.api_at or time.time()
                if peers >= self.want:
                    self.seen_at = time.time()
            time.sleep(POLL_S)
        if client is not None:
            client.__exit__()


class Wire(threading.Thread):
    """Each node's TCP bytes, sent + received, as the kernel counts them, by process: its p2pd (libp2p:
    DHT, records, updates, slices) and its own python (the direct bulk channel of version sync; the
    control API too, which this bench does not call while it measures). The node's own meter
    (potluck.swarm.traffic.Traffic) run here, sampled every ``POLL_S`` so that sockets that close are
    kept, and read at once for all nodes when asked."""

    def __init__(self, nodes: list[LocalNode]) -> None:
        super().__init__(daemon=True)
        self.meters: list[dict[str, Traffic]] = []
        for node in nodes:
            p2pd = next((p for p in tree(node.pid) if comm(p) == "p2pd"), None)
            self.meters.append({"p2pd": Traffic(), "direct": Traffic()})
            self.meters[-1]["p2pd"].watch(p2pd)
            self.meters[-1]["direct"].watch(node.pid)
        self.lock, self.stopped = threading.Lock(), threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(POLL_S):
            self.read()

    def read(self) -> list[dict[str, int]]:
        """Per node: bytes so far by process (``p2pd``, ``direct``); a meter that could not read the
        kernel is left out."""
        with self.lock:
            totals = [{k: m.sample().get("total") for k, m in meters.items()} for meters in self.meters]
        return [{k: t[0] + t[1] for k, t in node.items() if t is not None} for node in totals]


def versions(node: LocalNode) -> dict[int, str]:
    return {e["round"]: e["version"] for e in keeper_log(node)}


def summary(values: list[float], scale: float = 1.0, digits: int = 1) -> dict[str, float] | None:
    if not values:
        return None
    values = [v / scale for v in values]
    return {"median": round(statistics.median(values), digits), "max": round(max(values), digits)}


def memory_by_role(mem: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role in ("keeper", "contributor", "hivemind_peer"):
        trees = [m for name, m in mem.items() if name.startswith(role)]
        if trees:
            out[role] = {k: summary([m[k] for m in trees], MB) for k in ("rss", "pss", "uss", "anon")}
            typical = sorted(trees, key=lambda m: m["pss"])[len(trees) // 2]  # the median tree, by process
            out[role]["processes_MB"] = [
                {"name": p["name"], **{k: round(p[k] / MB, 1) for k in ("rss", "pss", "uss", "anon")}}
                for p in typical["processes"]
            ]
    return out


def run_potluck(n: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    keepers = max(1, n // 2)
    start_in = args.start_in + args.start_per_node * n  # round 0 after every node is up
    written = write_run(
        root / f"n{n}.toml", "toy", round_seconds=args.round_seconds, start_time=time.time() + start_in,
        pacing="ready", quorum=args.quorum,
    )  # fmt: skip
    with LocalSwarm.for_run(root / f"n{n}", written.manifest.run_id, written.path, args.record_ttl) as swarm:
        out = {"keepers": keepers, "contributors": n - keepers, **discovery(swarm, n, keepers, args)}
        log(f"n={n}: all peers seen {out['all_peers_seen_s']:.2f} s after the last API answered; "
            f"round 0 in {written.manifest.start_time - time.time():.0f} s")  # fmt: skip
        out |= rounds(swarm, args, start_in + args.timeout)
        log(
            f"n={n}: rounds {out['round_s']['all']} s; conflicting rounds {out['conflicting_rounds']}, "
            f"skipped {out['skipped_node_rounds']} node-rounds, fork switches {out['fork_switches']}, "
            f"agree: {out['agree_every_round']}"
        )
        swarm.stop()
    return out


def discovery(swarm: LocalSwarm, n: int, keepers: int, args: argparse.Namespace) -> dict[str, Any]:
    """Start the nodes (the first keeper, then the rest at once) and time them until all see all."""
    deadline = time.time() + args.timeout
    launched = [time.time()]
    swarm.add_node(name="keeper0").wait_ready(args.timeout)
    for i in range(1, n):
        launched.append(time.time())
        if i < keepers:
            swarm.add_node(name=f"keeper{i}")
        else:
            j = i - keepers
            swarm.add_contributor(f"contributor{j}", "--local-steps", str(args.local_steps), "--seed", str(j))
    watchers = [Watcher(node, t, n - 1, deadline) for node, t in zip(swarm.nodes, launched, strict=True)]
    for w in watchers:
        w.start()
    for w in watchers:
        w.join()
    if any(w.seen_at is None for w in watchers):
        stuck = [w.node.data_dir.name for w in watchers if w.seen_at is None]
        raise TimeoutError(f"n={n}: {stuck} did not see all {n - 1} peers:\n{watchers[-1].node.log_tail()}")
    api_at = [w.api_at or 0.0 for w in watchers]
    return {
        "all_peers_seen_s": round(max(0.0, max(w.seen_at or 0.0 for w in watchers) - max(api_at)), 2),
        "api_ready_s": summary([a - w.launched for a, w in zip(api_at, watchers, strict=True)], digits=2),
    }


def conflicting(held: list[dict[int, str]], wanted: set[int]) -> list[int]:
    """The rounds of ``wanted`` that two of the histories ``held`` hold with different versions."""
    return [r for r in sorted(wanted) if len({h[r] for h in held if r in h}) > 1]


def rounds(swarm: LocalSwarm, args: argparse.Namespace, first_timeout: float) -> dict[str, Any]:
    """Wait out round 0 and ``args.rounds`` more; their times, bytes, the nodes' memory and agreement."""
    first, last = swarm.nodes[0], args.rounds
    wire = Wire(swarm.nodes)
    wire.start()
    wait_for(lambda: 0 in versions(first), first_timeout, "round 0's commit", 0.05)
    bytes0, r0 = wire.read(), max(versions(first))  # the two at once: the bytes up to round r0's commit
    wait_for(lambda: last in versions(first), args.round_seconds * 3 * last, f"round {last}", 0.05)
    bytes1, r1 = wire.read(), max(versions(first))
    wire.stopped.set()
    mem = {node.data_dir.name: tree_memory(node.pid) for node in swarm.nodes}
    commits = {e["round"]: e["time"] for e in keeper_log(first)}
    round_s = [round(commits[r] - commits[r - 1], 2) for r in range(1, last + 1)]
    wanted = set(range(last + 1))

    def settled() -> bool:  # the slowest nodes may still be syncing the last version, or switching to it
        held = [versions(x) for x in swarm.nodes]
        return all(wanted <= set(h) for h in held) and not conflicting(held, wanted)

    with contextlib.suppress(TimeoutError):
        wait_for(settled, SETTLE_S, "every node's history to hold the same rounds")
    held = [versions(node) for node in swarm.nodes]
    fork_switches = sum(node.status()["fork_switches"] for node in swarm.nodes)
    # a node that fell behind catches up to the latest commit, skipping the rounds between (commit.py):
    # it never holds those, so they count as skipped; two nodes holding different versions of a round
    # is a conflict
    conflicts = conflicting(held, wanted)
    skipped = sum(r not in h for h in held for r in wanted)
    final = {h.get(last) for h in held}
    span = max(1, r1 - r0)
    per_round: dict[str, dict[str, list[float]]] = {"keeper": {}, "contributor": {}}
    for node, a, b in zip(swarm.nodes, bytes0, bytes1, strict=True):
        role = per_round[node.data_dir.name.rstrip("0123456789")]
        for path in set(a) & set(b):
            role.setdefault(path, []).append((b[path] - a[path]) / span)
    totals = [sum(b[k] - a[k] for k in set(a) & set(b)) / span for a, b in zip(bytes0, bytes1, strict=True)]
    return {
        "round_s": {"median": statistics.median(round_s), "all": round_s},
        "bytes_per_node_round": summary(totals, digits=0),
        "bytes_per_node_round_by_role": {
            role: {path: summary(v, digits=0) for path, v in paths.items()}
            for role, paths in per_round.items()
        },
        "bytes_rounds": f"{r0}..{r1}",
        "agree_every_round": not conflicts and len(final) == 1 and None not in final,
        "conflicting_rounds": conflicts,
        "fork_switches": fork_switches,
        "skipped_node_rounds": f"{skipped}/{len(held) * len(wanted)}",
        "memory_MB": memory_by_role(mem),
    }


def run_baseline(n: int) -> dict[str, Any]:
    mem: dict[str, dict[str, Any]] = {}

    def measure(pids: list[int]) -> None:
        mem.update({f"hivemind_peer{i}": tree_memory(pid) for i, pid in enumerate(pids)})

    times = baseline_discovery(n, view_interval_s(), while_up=measure)
    return {
        "all_peers_seen_s": round(times["seen_after_last_ready_s"], 2),
        "dht_ready_s": round(times["api_ready_median_s"], 2),
        "memory_MB": memory_by_role(mem),
    }


def plot(sizes: dict[str, Any], path: Path) -> str:
    plt = plots.pyplot()
    if plt is None:
        return plots.SKIPPED
    ns = [int(n) for n in sizes]
    rows = list(sizes.values())
    fig, ax = plt.subplots(1, 4, figsize=(16, 3.8))
    ax[0].plot(ns, [r["potluck"]["all_peers_seen_s"] for r in rows], "o-", label="potluck")
    ax[0].plot(ns, [r["hivemind"]["all_peers_seen_s"] for r in rows], "s--", label="hivemind DHT peers")
    ax[0].set_title("all peers seen after the last node is up, s")
    ax[1].plot(ns, [r["potluck"]["round_s"]["median"] for r in rows], "o-")
    ax[1].set_title("round time (median), s")
    ax[2].plot(ns, [(r["potluck"]["bytes_per_node_round"] or {}).get("median", 0) / 1000 for r in rows], "o-")
    ax[2].set_title("TCP bytes per node and round (median), kB")
    for role, side, style in (("keeper", "potluck", "o-"), ("contributor", "potluck", "^-"),
                              ("hivemind_peer", "hivemind", "s--")):  # fmt: skip
        ax[3].plot(ns, [r[side]["memory_MB"][role]["pss"]["median"] for r in rows], style, label=role)
    ax[3].set_title("PSS per node (process tree, median), MB")
    for a in ax:
        a.set_xlabel("nodes")
        a.set_xticks(ns)
    ax[0].legend()
    ax[3].legend()
    return plots.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4,8,16,24", help="node counts, half keepers (default 4,8,16,24)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds measured after round 0 (default 5)")
    parser.add_argument("--round-seconds", type=float, default=30.0, help="the upper bound of a ready round")
    parser.add_argument("--quorum", type=int, default=1, help="signatures a commit needs (potluck init's 1)")
    parser.add_argument("--local-steps", type=int, default=5, help="each contributor's steps per round")
    parser.add_argument("--start-in", type=float, default=10.0, help="round 0 starts this much later ...")
    parser.add_argument("--start-per-node", type=float, default=4.0, help="... plus this much per node")
    parser.add_argument("--record-ttl", type=float, default=30.0, help="the nodes' --record-ttl")
    parser.add_argument(
        "--timeout", type=float, default=240.0, help="per size, for the nodes to see each other"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the hivemind peers")
    parser.add_argument("--out", type=Path, default=Path("bench/out/swarm.png"), help="the plot ('': none)")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' folders and logs")
    parser.add_argument("--replot", type=Path, metavar="JSON", help="only draw --out from a saved result")
    args = parser.parse_args(argv)
    if args.replot is not None:
        print(plot(json.loads(args.replot.read_text())["results"]["sizes"], args.out))
        return 0
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: expected e.g. 4,8,16, got {args.sizes!r}")
    if not sizes or min(sizes) < 2 or args.rounds < 1:
        parser.error("each size must be >= 2 and --rounds >= 1")
    started = time.time()
    results: dict[str, Any] = {"sizes": {}}
    tmp = tempfile.mkdtemp(prefix="potluck-swarm-bench-")
    log(f"nodes' folders in {tmp}" + (" (kept)" if args.keep else ""))
    try:
        for n in sizes:
            entry: dict[str, Any] = {"potluck": run_potluck(n, args, Path(tmp))}
            if not args.no_baseline:
                entry["hivemind"] = run_baseline(n)
                log(f"n={n}: hivemind peers see each other {entry['hivemind']['all_peers_seen_s']:.2f} s "
                    f"after the last DHT is up")  # fmt: skip
            results["sizes"][str(n)] = entry
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if str(args.out) and not args.no_baseline:
        results["plot"] = plot(results["sizes"], args.out)
    report_args = argparse.Namespace(**{**vars(args), "out": args.json})
    emit("swarm", report_args, results, started, plot_path=str(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
