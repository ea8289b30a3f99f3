"""Benchmark: where the merge runs. A robust coordinate strategy merged per reducer slice inside the
averaging, against the same strategy merged whole on every node (gathered), and against potluck's
default weighted mean through hivemind's all-reduce (the baseline), on real nodes.

    python bench/sliced.py [--params 1000000] [--peers 4] [--updates 8] [--rounds 3]

For each placement: ``--peers`` real `potluck run` processes on 127.0.0.1 (potluck.localswarm) with a
manifest of the toy task sized to ``--params``; every round, ``--updates`` signed sparse updates
(``--density``) are published at the round's start, and each node reports ``aggregation.last_merge_s``
(from the round's assignment to the merged version: the all-reduce, or the slices with their audits,
or the whole merge; signatures excluded). Medians over nodes and rounds; ratios against the
all-reduce of the same run. Then, in this process, the compute alone: the strategy over all
coordinates (what a gathered node does) against one slice of them plus the audit samples (what a
reducer does), and the bytes each node receives.

Prints one JSON object (progress on stderr). Runs ~4 placements x (startup + rounds x round length).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from potluck.engine.conduct import AUDIT_SAMPLES
from potluck.identity import NodeIdentity
from potluck.localswarm import LocalSwarm, wait_for
from potluck.manifest import create_manifest
from potluck.merge import get_strategy
from potluck.rounds import schedule
from potluck.rounds.slices import merkle_root, slice_bounds
from potluck.runfiles import write_run
from potluck.tasks import genesis, get_task
from potluck.updates.codec import Update, decode_update, encode_update
from potluck.updates.sparsify import sparsify

PLACEMENTS = {  # label -> (strategy, the manifest's placement)
    "allreduce": ("weighted_mean", "allreduce"),
    "sliced_median": ("coordinate_median", "sliced"),
    "sliced_trimmed_mean": ("trimmed_mean", "sliced"),
    "gathered_median": ("coordinate_median", "gathered"),
}


def log(message: str) -> None:
    print(f"[sliced] {message}", file=sys.stderr, flush=True)


def make_updates(manifest, state, base: str, r: int, count: int, density: float, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        author = NodeIdentity.generate()
        tensors = tuple(
            sparsify(name, rng.standard_normal(t.shape).astype(np.float32) * 0.01, density)
            for name, t in state.items()
        )
        out.append(encode_update(Update(manifest.run_id, r, base, author.public_key, 1, 10, tensors), author))
    return out


def run_placement(label: str, args, task_args, root: Path) -> dict:
    strategy, placement = PLACEMENTS[label]
    path = root / f"{label}.toml"
    run = write_run(
        path, "toy", task_args=task_args, round_seconds=args.round_seconds, density=args.density,
        strategy=strategy, quorum=args.peers, placement=placement,
    )  # fmt: skip
    manifest, state = run.manifest, run.state
    merge_s: list[float] = []
    with LocalSwarm.for_run(root / label, manifest.run_id, path, record_ttl=8) as swarm:
        swarm.add_node().wait_ready(90)
        for _ in range(args.peers - 1):
            swarm.add_node()
        for node in swarm.nodes:
            node.wait_ready(90)
        swarm.wait_all_see(args.peers - 1, timeout=90)
        for i in range(args.rounds):
            r = schedule.round_at(manifest, time.time()) + 1
            base = swarm.nodes[0].status()["version"]
            updates = make_updates(manifest, state, base, r, args.updates, args.density, seed=1000 * i + r)
            while time.time() < schedule.round_start(manifest, r) + 0.2:
                time.sleep(0.05)
            for j, data in enumerate(updates):
                reply = swarm.nodes[j % args.peers].publish(data)
                if not reply.accepted:
                    raise RuntimeError(f"update refused: {reply.reason}")
            wait_for(
                lambda r=r: all(n.status()["committed_round"] >= r for n in swarm.nodes),
                2 * args.round_seconds,
                f"{label} round {r}",
            )
            versions = {n.status()["version"] for n in swarm.nodes}
            if len(versions) != 1:
                raise RuntimeError(f"{label}: nodes disagree after round {r}")
            times = [n.status()["aggregation"]["last_merge_s"] for n in swarm.nodes]
            placement = swarm.nodes[0].status()["aggregation"]["placement"]
            merge_s += times
            log(f"{label} ({placement}) round {r}: merge {', '.join(f'{t:.2f}' for t in times)} s")
    return {
        "strategy": strategy,
        "placement": placement,
        "merge_s": merge_s,
        "median_s": statistics.median(merge_s),
    }


def compute_only(args, params: int) -> dict:
    """The strategy's CPU cost per node: whole (gathered) vs one slice plus the audits (sliced)."""
    state, genesis_hash = genesis(get_task("toy", {"hidden": hidden_for(params)}), 0)
    shapes = {k: v.shape for k, v in state.items()}
    manifest = create_manifest(
        NodeIdentity.generate(), "toy", genesis_hash, task_args={"hidden": hidden_for(params)}
    )
    datas = make_updates(manifest, state, genesis_hash, 0, args.updates, args.density, seed=7)
    updates = [decode_update(d) for d in datas]
    weights = [10.0] * len(updates)
    length = sum(v.size for v in state.values())
    lo, hi = slice_bounds(length, args.peers)[0]
    out: dict = {"update_bytes": int(statistics.median(len(d) for d in datas))}
    for name in ("coordinate_median", "trimmed_mean"):
        strategy = get_strategy(name, {})
        whole, sliced = [], []
        for _ in range(3):
            t = time.perf_counter()
            strategy.merge(updates, weights, round_seed=1)
            whole.append(time.perf_counter() - t)
            t = time.perf_counter()
            values = strategy.merge_columns(
                updates, weights, round_seed=1, shapes=shapes, columns=np.arange(lo, hi, dtype=np.int64)
            )
            merkle_root(values)
            rng = np.random.default_rng(0)
            for _ in range(args.peers - 1):  # audit every other slice
                cols = np.sort(rng.choice(hi - lo, AUDIT_SAMPLES, replace=False)).astype(np.int64) + lo
                strategy.merge_columns(updates, weights, round_seed=1, shapes=shapes, columns=cols)
            sliced.append(time.perf_counter() - t)
        out[name] = {
            "whole_s": statistics.median(whole),
            "slice_and_audits_s": statistics.median(sliced),
            "speedup": statistics.median(whole) / statistics.median(sliced),
        }
    return out


def hidden_for(params: int) -> int:
    return max(8, params // 21)  # toy: 16 inputs, 4 outputs -> 21 * hidden + 4 parameters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-seconds", type=float, default=24.0)
    parser.add_argument("--placements", default=",".join(PLACEMENTS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    task_args = {"hidden": hidden_for(args.params)}
    started = time.time()
    results = {}
    with tempfile.TemporaryDirectory(prefix="potluck-bench-sliced-") as tmp:
        for label in args.placements.split(","):
            log(f"{label}: {args.peers} nodes, {args.rounds} rounds")
            results[label] = run_placement(label, args, task_args, Path(tmp))
    base = results.get("allreduce", {}).get("median_s")
    for r in results.values():
        r["ratio_vs_allreduce"] = r["median_s"] / base if base else None
    length = 21 * task_args["hidden"] + 4
    compute = compute_only(args, args.params)
    n = args.peers
    report = {
        "benchmark": "sliced",
        "config": vars(args) | {"out": str(args.out) if args.out else None, "coordinates": length},
        "machine": {"python": platform.python_version(), "cpu": platform.machine()},
        "placements": results,
        "compute_per_node": compute,
        "bytes_received_per_node": {
            "allreduce_float64": int(2 * (n - 1) / n * length * 8),
            "sliced_values": int((n - 1) / n * length * 8),
            # every keeper's exchange fetches every update of the round, whatever the placement
            "round_updates": compute["update_bytes"] * args.updates,
        },
        "wall_s": round(time.time() - started, 1),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    log(f"done ({digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
