"""What the probe rule costs a keeper (issue 15): milliseconds per update to score a round on the digits
task's probe set, per model size, as the daemon runs it (``potluck.rounds.merging.probe_round``: the
updates densified, leave-one-out scores, rescoring after each drop).

    python bench/probe_cost.py [--hidden 64,256,1024] [--updates 8] [--flippers 2] [--per-class 10]
                               [--floor 0] [--pretrain 0]

Each round: ``--updates`` signed updates, each 20 SGD steps from the base (the seeded init, or that
trained ``--pretrain`` steps on the whole training split) on its own 200 training
images, the last ``--flippers`` with labels ``9 - y`` (so the rule drops and rescores); each size is timed
``--repeat`` times and the fastest kept: wall clock and this process's CPU time (numpy single-threaded:
the CPU time is the work; on a shared machine the wall clock is that times the contention).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from potluck.identity import NodeIdentity
from potluck.merge.probe import ProbeRule
from potluck.rounds.merging import probe_round
from potluck.tasks import get_task
from potluck.tasks.data import LabeledData
from potluck.updates.codec import SparseTensor, Update, decode_update, encode_update

GENESIS = "00" * 32


def updates(task, state, n: int, flippers: int) -> list:
    train, rng = task.local_data(None), np.random.default_rng(0)
    out = []
    for i in range(n):
        idx = rng.choice(len(train), 200, replace=False)
        y = 9 - train.y[idx] if i >= n - flippers else train.y[idx]
        new, _ = task.train(state, LabeledData(train.x[idx], y), steps=20, seed=i)
        author = NodeIdentity.generate()
        tensors = tuple(
            SparseTensor(k, t.shape, np.arange(t.size), (new[k] - t).reshape(-1).astype(np.float32))
            for k, t in sorted(state.items())
        )
        out.append(
            decode_update(
                encode_update(Update("r", 0, GENESIS, author.public_key, i + 1, 10, tensors), author)
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", default="64,256,1024")
    ap.add_argument("--updates", type=int, default=8)
    ap.add_argument("--flippers", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--floor", type=float, default=0.0, help="the manifest's probe.floor")
    ap.add_argument("--pretrain", type=int, default=0, help="train the base this many steps first")
    args = ap.parse_args()
    rows = []
    for hidden in [int(h) for h in args.hidden.split(",")]:
        task = get_task("digits", {"hidden": hidden})
        state = task.init_state(0)
        if args.pretrain:
            state, _ = task.train(state, task.local_data(None), steps=args.pretrain, seed=1)
        rule = ProbeRule(task.probe_set(args.per_class), task.layers, 0.5, args.floor)
        weighted = [(10, u) for u in updates(task, state, args.updates, args.flippers)]
        best, cpu, excluded = float("inf"), float("inf"), {}
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            _, excluded = probe_round(state, weighted, rule, 1.0)
            best, cpu = min(best, time.perf_counter() - t), min(cpu, time.process_time() - c)
        params = sum(v.size for v in state.values())
        flipped = {u.update_id for _, u in weighted[len(weighted) - args.flippers :]}
        row = {"hidden": hidden, "floor": args.floor, "pretrain": args.pretrain, "params": int(params),
               "updates": args.updates, "probe": len(rule.probe.y),
               "dropped": len(excluded), "flippers_dropped": len(set(excluded) & flipped),
               "scorings": len(excluded) + 1, "round_ms": round(best * 1e3, 1),
               "ms_per_update": round(best * 1e3 / args.updates, 2),
               "cpu_ms_per_update": round(cpu * 1e3 / args.updates, 2)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
