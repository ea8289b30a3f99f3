"""Benchmark: a large model's rounds under the placement rule, against another tree's code (the baseline).

    python bench/placement.py --baseline-tree /tmp/wt-main/daemon [--inputs 768] [--hidden 65536]
        [--keepers 2] [--contributors 2] [--density 0.01] [--round-seconds 60] [--rounds 5]

For each code tree (``--baseline-tree``, then this checkout's): ``--keepers`` real `potluck run`
processes on 127.0.0.1 (potluck.localswarm; the tree is their PYTHONPATH) serve a run of the toy task
sized ``inputs x hidden`` with the default weighted mean. Every round, ``--contributors`` signed sparse
updates (``--density``, fp32 deltas of the current version, each by its own key; generated in this
process, not trained) are published at the round's start, spread over the keepers; with ``--train
STEPS`` the contributors are real `potluck join` processes instead, each training ``STEPS`` local steps
on its shard of the toy task a round (they share this box's cores with the keepers). Per round: whether
every keeper committed it, whether they agree, the seconds from the end of collection (the schedule's
aggregation start) until each keeper reports the commit (polled every 0.2 s), the placement the
keepers report, and the round's error line when nothing was committed.

Prints one JSON object (progress on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import emit  # bench/report.py: this script's folder is on the path

from potluck.identity import NodeIdentity
from potluck.localswarm import LocalSwarm
from potluck.rounds import schedule
from potluck.runfiles import write_run
from potluck.store.versions import VersionStore
from potluck.updates.codec import Update, encode_update
from potluck.updates.sparsify import sparsify

HERE = Path(__file__).resolve().parents[1] / "daemon"


def log(message: str) -> None:
    print(f"[placement] {message}", file=sys.stderr, flush=True)


def make_updates(manifest, state, base: str, r: int, authors, density: float, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for author in authors:
        tensors = tuple(
            sparsify(name, rng.standard_normal(t.shape, dtype=np.float32) * 0.01, density)
            for name, t in state.items()
        )
        update = Update(manifest.run_id, r, base, author.public_key, int(time.time() * 1000), 10, tensors)
        out.append(encode_update(update, author))
    return out


def run_tree(label: str, tree: Path, args, root: Path) -> dict:
    task_args = {"inputs": args.inputs, "hidden": args.hidden}
    written = write_run(
        root / f"{label}.toml", "toy", task_args=task_args, round_seconds=args.round_seconds,
        density=args.density, start_time=time.time() + args.start_in,
    )  # fmt: skip
    manifest = written.manifest
    authors = [NodeIdentity.generate() for _ in range(args.contributors)]
    os.environ["PYTHONPATH"] = str(tree)  # the nodes' code
    rounds: list[dict] = []
    with LocalSwarm.for_run(root / label, manifest.run_id, written.path, record_ttl=12) as swarm:
        swarm.start(args.keepers, timeout=180)
        swarm.wait_all_see(args.keepers - 1, timeout=120)
        keepers = list(swarm.nodes)
        if args.train:
            for j in range(args.contributors):
                shard = f"{j}/{args.contributors}"
                swarm.add_contributor(
                    f"contributor{j}", "--shard", shard, "--local-steps", str(args.train), "--seed", str(j),
                    manifest=written.path,
                )  # fmt: skip
            for node in swarm.nodes[len(keepers) :]:
                node.wait_ready(600)
            log(f"{label}: {args.contributors} contributors up")
        for _ in range(args.rounds):
            r = schedule.round_at(manifest, time.time()) + 1  # the next one: its updates onto our version
            sizes = []
            if not args.train:
                base = keepers[0].status()["version"]
                state = VersionStore(keepers[0].data_dir / "versions").get(base)
                datas = make_updates(manifest, state, base, r, authors, args.density, seed=r)
                sizes = [len(d) for d in datas]
            while time.time() < schedule.round_start(manifest, r) + 0.2:
                time.sleep(0.05)
            for j, data in enumerate([] if args.train else datas):
                reply = keepers[j % len(keepers)].publish(data, timeout=60)
                if not reply.accepted:
                    raise RuntimeError(f"{label}: update refused: {reply.reason} {reply.detail}")
            collected = schedule.aggregation_start(manifest, r)
            end = schedule.deadline(manifest, r) + 2.0
            commit_s: dict[int, float] = {}
            while time.time() < end and len(commit_s) < len(keepers):
                for i, node in enumerate(keepers):
                    if i not in commit_s and node.status()["committed_round"] >= r:
                        commit_s[i] = time.time() - collected
                time.sleep(0.2)
            statuses = [n.status() for n in keepers]
            versions = {s["version"] for s in statuses}
            row = {
                "round": r,
                "committed": len(commit_s) == len(keepers),
                "agree": len(versions) == 1,
                "update_bytes": sizes,
                "collection_end_to_commit_s": [round(commit_s[i], 2) for i in sorted(commit_s)],
                "last_merge_s": [s.get("aggregation", {}).get("last_merge_s", 0.0) for s in statuses],
                "participants": [s.get("participants", 0) for s in statuses],
                "phases": statuses[0].get("aggregation", {}).get("last_phases", {}),
                "placement": sorted({s.get("aggregation", {}).get("placement", "") for s in statuses}),
                "round_error": sorted({s.get("round_error", "") for s in statuses} - {""}),
            }
            rounds.append(row)
            log(f"{label} round {r}: {json.dumps(row)}")
    committed = [x for x in rounds if x["committed"]]
    times = [t for x in committed for t in x["collection_end_to_commit_s"]]
    return {
        "tree": str(tree),
        "rounds": rounds,
        "committed": len(committed),
        "of": len(rounds),
        "median_collection_end_to_commit_s": statistics.median(times) if times else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-tree", type=Path, required=True, help="daemon/ of the baseline's code")
    parser.add_argument("--inputs", type=int, default=768)
    parser.add_argument("--hidden", type=int, default=65536)
    parser.add_argument("--keepers", type=int, default=2)
    parser.add_argument("--contributors", type=int, default=2)
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--round-seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--start-in", type=float, default=20.0, help="seconds from creation to round 0")
    parser.add_argument("--only", choices=("baseline", "this"), help="run one tree only")
    parser.add_argument(
        "--train", type=int, default=0, metavar="STEPS",
        help="contributors are real `potluck join` processes training STEPS local steps a round",
    )  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    started = time.time()
    results = {}
    trees = {"baseline": args.baseline_tree.resolve(), "this": HERE}
    with tempfile.TemporaryDirectory(prefix="potluck-bench-placement-") as tmp:
        for label, tree in trees.items():
            if args.only in (None, label):
                log(f"{label} ({tree}): {args.keepers} keepers, {args.rounds} rounds")
                results[label] = run_tree(label, tree, args, Path(tmp))
    params = args.hidden * args.inputs + args.hidden + 4 * args.hidden + 4  # toy: 4 outputs
    emit("placement", args, results, started, params=params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
