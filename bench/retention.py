"""Benchmark: merging that keeps capabilities. Two groups fine-tune one digits version on disjoint
label sets (0-4 and 5-9); their two deltas are merged with potluck.merge strategies.

    python bench/retention.py          # ~20 s on 2 cores

* ``base``: genesis trained ``--base-steps`` SGD steps on all the training data (the shared version).
* group A fine-tunes ``base`` for ``--steps`` steps on the training samples labelled 0-4, group B on
  those labelled 5-9 (each forgets the other half); delta = fine-tuned - base.
* merged = ``get_strategy(name, args).merge([delta_A, delta_B], [n_A, n_B])``, new version
  ``next_state(base, merged, 1.0)``, for ``mean``, ``task_arithmetic`` (lambda 1: both deltas added)
  and ``ties`` (k = 20%, lambda 1), next to each group's own model and, for reference, ``joint``:
  ``base`` trained 2 x ``--steps`` on all the training data (the same compute, data pooled).

Accuracy on the fixed held-out split: on the test images labelled 0-4, on those labelled 5-9, and
overall. JSON on stdout, a markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch

from potluck.merge import get_strategy, next_state
from potluck.tasks import get_task
from potluck.tasks.data import LabeledData, evaluate_mlp

LAYERS = ("fc1", "fc2")
METHODS = {
    "mean": ("mean", {}),
    "task_arithmetic": ("task_arithmetic", {"lambda": 1.0}),
    "ties": ("ties", {"k": 20, "lambda": 1.0}),
}


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def subset(data: LabeledData, labels: range) -> LabeledData:
    keep = np.isin(data.y, list(labels))
    return LabeledData(data.x[keep], data.y[keep])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-steps", type=int, default=60)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    task = get_task("digits", {"hidden": args.hidden, "lr": args.lr, "batch": 32, "momentum": 0.9})
    train, test = task.local_data(None), task.test_data()
    halves = {"0-4": range(0, 5), "5-9": range(5, 10)}
    tests = {name: subset(test, labels) for name, labels in halves.items()}

    def score(state) -> dict[str, float]:
        out = {f"acc_{name}": evaluate_mlp(state, t, layers=LAYERS) for name, t in tests.items()}
        out["acc_all"] = task.evaluate(state)
        return out

    base, _ = task.train(task.init_state(args.seed), train, steps=args.base_steps, seed=1)
    rows = {"base": score(base)}
    deltas, weights = [], []
    for g, (name, labels) in enumerate(halves.items()):
        own, samples = task.train(base, subset(train, labels), steps=args.steps, seed=10 + g)
        rows[f"group {name} alone"] = score(own)
        deltas.append({k: own[k] - base[k] for k in base})
        weights.append(samples)
    joint, _ = task.train(base, train, steps=2 * args.steps, seed=20)
    rows["joint (pooled data, same compute)"] = score(joint)
    for label, (name, strategy_args) in METHODS.items():
        merged = get_strategy(name, strategy_args).merge(deltas, weights, round_seed=args.seed)
        rows[f"merged: {label}"] = score(next_state(base, merged, 1.0))
    result = {
        "benchmark": "retention",
        "config": {**vars(args), "task": "digits", "strategies": {k: list(v) for k, v in METHODS.items()}},
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.machine(),
        },
        "results": rows,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    lines = ["| model | acc on 0-4 | acc on 5-9 | acc overall |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['acc_0-4']:.4f} | {r['acc_5-9']:.4f} | {r['acc_all']:.4f} |")
    log("\n".join(lines))


if __name__ == "__main__":
    main()
