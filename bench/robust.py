"""Benchmark: merge strategies against Byzantine contributors on non-IID digits (potluck.merge).

    python bench/robust.py            # every strategy x every attack; ~5-8 minutes on 2 cores
    python bench/robust.py --quick    # 7 strategies, fewer rounds; ~1.5 minutes
    python bench/robust.py --seed 1 --strategies mean,norm_filter --attacks sign_flip,ipm_100 --rounds 12
    python bench/robust.py --strategies norm_filter,centered_clip --attacks ipm_2,ipm_4  # IPM, any eps

The round loop of bench/federated.py (same task args, shards, K, density 2%, int8, error feedback,
real codec: encode with the contributor's Ed25519 key, decode with the signature checked), with the
merge done by ``potluck.merge.get_strategy(name).merge(updates, weights, round_seed=r)`` and
``next_state(V_r, merged, outer_lr)``. 8 contributors on the label-sorted shards I/8; contributors 6
and 7 are attackers (attacks in bench/attacks.py): each computes the delta an honest
contributor would (training on its shard, its own error feedback; ``label_flip`` trains on flipped
labels), then sends ``attack(delta)`` through the same codec at the same density, claiming its real
sample count. ``honest_only`` is the 6 honest contributors alone with the ``mean`` strategy: the
accuracy robust merging should keep. Final held-out accuracy per strategy and attack -> JSON on
stdout, heatmap PNG (``--out``). ``--seed`` changes the initial weights and every contributor's
training stream (the shards are fixed). Also a small simulation of the sparse-aware rule: relative error of
each coordinate-wise aggregate against the honest mean on real top-1% digits updates.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path

import attacks  # bench/attacks.py, bench/plots.py: this script's folder is on the path
import numpy as np
import plots
import torch

from potluck.hashing import version_hash
from potluck.identity import NodeIdentity
from potluck.merge import get_strategy, next_state
from potluck.tasks import get_task
from potluck.updates.codec import SparseTensor, Update, decode_update, encode_update
from potluck.updates.sparsify import ErrorFeedback, sparsify

RUN = "bench-robust"
STRATEGIES: dict[str, tuple[str, dict]] = {  # label -> (strategy name, args)
    "mean": ("mean", {}),
    "weighted_mean": ("weighted_mean", {}),
    "task_arithmetic": ("task_arithmetic", {"lambda": 0.125}),  # sum / 8: the mean's scale
    "ties": ("ties", {}),
    "dare": ("dare", {}),
    "trimmed_mean": ("trimmed_mean", {}),
    "trimmed_mean_dense": ("trimmed_mean", {"sparse": "false"}),
    "coordinate_median": ("coordinate_median", {}),
    "coordinate_median_s5": ("coordinate_median", {"min_support": 5}),  # padded: 2f + 1
    "coordinate_median_dense": ("coordinate_median", {"sparse": "false"}),
    "centered_clip": ("centered_clip", {}),
    "multi_krum": ("multi_krum", {}),
    "geometric_median": ("geometric_median", {}),
    "norm_filter": ("norm_filter", {}),
    "norm_filter_clip_only": ("norm_filter", {"reject": 0, "clip": 1}),  # clip to the median norm, mean
}
QUICK = (
    "mean",
    "trimmed_mean",
    "coordinate_median",
    "centered_clip",
    "multi_krum",
    "geometric_median",
    "norm_filter",
)
SIM_LABELS = (
    "mean",
    "coordinate_median_dense",
    "coordinate_median",
    "coordinate_median_s5",
    "trimmed_mean_dense",
    "trimmed_mean",
    "centered_clip",
    "norm_filter",
)
# robust rules with their default args: the recommended default is the one with the smallest worst drop
ROBUST = tuple(name for name in QUICK if name != "mean")


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def strategy_of(label: str):
    name, args = STRATEGIES[label]
    return get_strategy(name, args)


def train_seed(seed: int, round_: int, contributor: int) -> int:
    return (seed << 40) | (round_ << 16) | contributor


def dense_of(tensors, shapes) -> dict[str, np.ndarray]:
    out = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    for t in tensors:
        out[t.name].reshape(-1)[t.indices] = t.values
    return out


def to_sparse(delta, density) -> list[SparseTensor]:
    return [sparsify(k, delta[k], density) for k in sorted(delta)]


_TASK = None


def setup(cfg: dict):
    global _TASK
    if _TASK is None:
        torch.set_num_threads(1)
        _TASK = get_task("digits", cfg["task_args"])
    return _TASK


def simulate(job: tuple[str, str, dict]) -> tuple[str, str, list[float], float]:
    """One run: strategy label x attack; returns the per-round accuracy."""
    label, attack, cfg = job
    started = time.perf_counter()
    task = setup(cfg)
    n, attackers = cfg["contributors"], set(cfg["attackers"])
    if attack == "honest_only":
        members, attackers, strategy = (
            [c for c in range(n) if c not in attackers],
            set(),
            get_strategy("mean"),
        )
    else:
        members, strategy = list(range(n)), strategy_of(label)
        if attack == "none":
            attackers = set()
    datas = {c: task.local_data(f"{c}/{n}") for c in members}
    for c in attackers if attack == "label_flip" else ():
        datas[c] = attacks.flip_labels(datas[c])
    ids = {c: NodeIdentity.generate() for c in members}
    feedback = {c: ErrorFeedback(cfg["density"], cfg["values"]) for c in members}
    replay = {c: attacks.Replay() for c in attackers}
    state = task.init_state(cfg["seed"])
    shapes = {k: v.shape for k, v in state.items()}
    acc = [task.evaluate(state)]
    for r in range(cfg["rounds"]):
        base = version_hash(state)
        sent: dict[int, tuple[list[SparseTensor], int]] = {}
        for c in members:
            new, samples = task.train(
                state, datas[c], steps=cfg["local_steps"], seed=train_seed(cfg["seed"], r, c)
            )
            delta = {k: new[k] - state[k] for k in state}
            sent[c] = (feedback[c].compress(delta), samples)
        honest_dense = [dense_of(sent[c][0], shapes) for c in members if c not in attackers]
        for c in sorted(attackers):
            own = dense_of(sent[c][0], shapes)
            if attack == "sign_flip":
                bad = attacks.sign_flip(own)
            elif attack == "random":
                bad = attacks.random_direction(own, seed=train_seed(cfg["seed"], r, c))
            elif attack.startswith("ipm_"):
                bad = attacks.ipm(honest_dense, float(attack.removeprefix("ipm_")))
            elif attack == "replay":
                bad = replay[c](own)
            else:  # label_flip: the flipped-label delta as is
                bad = own
            sent[c] = (to_sparse(bad, cfg["density"]), sent[c][1])
        updates, weights = [], []
        for c in members:
            tensors, samples = sent[c]
            update = Update(RUN, r, base, ids[c].public_key, r + 1, samples, tuple(tensors))
            updates.append(decode_update(encode_update(update, ids[c], cfg["values"])))
            weights.append(min(samples, cfg["weight_cap"]))
        merged = strategy.merge(updates, weights, round_seed=train_seed(cfg["seed"], r, 0xFFFF))
        state = next_state(state, merged, cfg["outer_lr"])
        a = task.evaluate(state)
        acc.append(a if math.isfinite(a) else 0.0)
    return label, attack, acc, time.perf_counter() - started


def sparse_simulation(cfg: dict) -> dict:
    """Relative L2 error vs the honest mean of coordinate-wise aggregates, on real top-1% updates."""
    task = setup(cfg)
    n = cfg["contributors"]
    genesis = task.init_state(cfg["seed"])
    warm, _ = task.train(genesis, task.local_data(None), steps=200, seed=7)
    out = {}
    for point, state in (("genesis", genesis), ("after_200_central_steps", warm)):
        deltas = []
        for c in range(n):
            new, _ = task.train(state, task.local_data(f"{c}/{n}"), steps=cfg["local_steps"], seed=c)
            tensors = ErrorFeedback(0.01, cfg["values"]).compress({k: new[k] - state[k] for k in state})
            deltas.append(dense_of(tensors, {k: v.shape for k, v in state.items()}))
        row = {}
        for scenario, inputs, honest in (
            ("8 honest", deltas, deltas),
            (
                "6 honest + 2 sign_flip x1000",
                deltas[:6] + [attacks.sign_flip(d) for d in deltas[6:]],
                deltas[:6],
            ),
        ):
            ref = get_strategy("mean").merge(honest, [1] * len(honest), round_seed=0)
            ref_norm = math.sqrt(sum(float(np.sum(v**2)) for v in ref.values()))
            for label in SIM_LABELS:
                got = strategy_of(label).merge(inputs, [1] * len(inputs), round_seed=0)
                err = math.sqrt(sum(float(np.sum((got[k] - ref[k]) ** 2)) for k in ref)) / ref_norm
                row.setdefault(scenario, {})[label] = round(err, 4)
        touched = np.stack([np.concatenate([d[k].reshape(-1) for k in sorted(d)]) != 0 for d in deltas]).sum(
            0
        )
        row["touched_by_histogram"] = np.bincount(touched, minlength=n + 1).tolist()
        out[point] = row
    return out


def _is_ipm(attack: str) -> bool:
    try:
        return attack.startswith("ipm_") and math.isfinite(float(attack.removeprefix("ipm_")))
    except ValueError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"strategies {QUICK}, 12 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="default 30 (12 with --quick)")
    ap.add_argument("--contributors", type=int, default=8)
    ap.add_argument("--attackers", default="6,7")
    ap.add_argument("--local-steps", type=int, default=20)
    ap.add_argument("--density", type=float, default=0.02)
    ap.add_argument("--values", choices=["int8", "fp16"], default="int8")
    ap.add_argument("--outer-lr", type=float, default=1.0)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0, help="initial weights and training streams (default 0)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--strategies", default="", help="comma-separated subset of: " + ",".join(STRATEGIES))
    ap.add_argument(
        "--attacks",
        default="",
        help="comma-separated subset of " + ",".join(attacks.ATTACKS) + " (or ipm_EPS for any EPS)",
    )
    ap.add_argument("--out", default="bench/out/robust.png")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    rounds = args.rounds or (12 if args.quick else 30)
    labels = list(QUICK if args.quick else STRATEGIES)
    cols = args.attacks.split(",") if args.attacks else list(attacks.ATTACKS)
    if args.strategies:
        labels = args.strategies.split(",")
    unknown = [s for s in labels if s not in STRATEGIES]
    unknown += [a for a in cols if a not in attacks.ATTACKS and not _is_ipm(a)]
    if unknown:
        ap.error(f"unknown strategy label(s) or attack(s) {unknown}; labels: {', '.join(STRATEGIES)}")
    cfg = {
        "rounds": rounds,
        "contributors": args.contributors,
        "attackers": [int(a) for a in args.attackers.split(",")],
        "local_steps": args.local_steps,
        "density": args.density,
        "values": args.values,
        "outer_lr": args.outer_lr,
        "seed": args.seed,
        "weight_cap": 1 << 20,
        "task_args": {"hidden": args.hidden, "lr": args.lr, "batch": 32, "momentum": 0.9},
    }
    started = time.perf_counter()
    jobs = [("honest_only", "honest_only", cfg)] + [(s, a, cfg) for s in labels for a in cols]
    log(f"{len(jobs)} runs of {rounds} rounds on {args.workers} workers")
    results: dict[str, dict[str, list[float]]] = {}
    with mp.get_context("fork").Pool(args.workers) as pool:
        for done, (label, attack, acc, secs) in enumerate(pool.imap_unordered(simulate, jobs), 1):
            results.setdefault(label, {})[attack] = acc
            log(f"  [{done}/{len(jobs)}] {label:24s} {attack:12s} final {acc[-1]:.4f} ({secs:.1f} s)")
    log("sparse-aware simulation")
    sim = sparse_simulation(cfg)
    honest = results.pop("honest_only")["honest_only"]
    final = {s: {a: results[s][a][-1] for a in cols} for s in labels}
    drop = {s: max(100 * (honest[-1] - v) for v in final[s].values()) for s in labels}
    # recommended robust default: the robust rule (default args) with the smallest worst-case drop
    rec = min((s for s in ROBUST if s in final), key=lambda s: drop[s], default=labels[0])
    result = {
        "benchmark": "robust",
        "config": {**cfg, "strategies": {s: list(STRATEGIES[s]) for s in labels}, "attacks": cols},
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.machine(),
        },
        "honest_only_final": honest[-1],
        "final_accuracy": final,
        "worst_drop_vs_honest_only_points": {s: round(d, 2) for s, d in drop.items()},
        "within_2_points_under_every_attack": [s for s in labels if drop[s] <= 2.0],
        "recommended": {
            "strategy": rec,
            "args": STRATEGIES[rec][1],
            "worst_drop_points": round(drop[rec], 2),
            "within_2_points_of_honest_only": bool(drop[rec] <= 2.0),
        },
        "mean_under_sign_flip": final.get("mean", {}).get("sign_flip"),
        "mean_collapses_under_sign_flip": bool(final.get("mean", {}).get("sign_flip", 1.0) < 0.5),
        "sparse_aware_simulation": sim,
        "curves": {"honest_only": honest, **results},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if args.out:
        result["plot"] = plot(result, labels, Path(args.out))
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    log(table(result, labels))


def table(result: dict, labels: list[str]) -> str:
    cols = result["config"]["attacks"]
    head = "| strategy | " + " | ".join(cols) + " | worst drop (pts) |"
    lines = [head, "|---" * (len(cols) + 2) + "|"]
    for s in labels:
        cells = " | ".join(f"{result['final_accuracy'][s][a]:.3f}" for a in cols)
        lines.append(f"| {s} | {cells} | {result['worst_drop_vs_honest_only_points'][s]:.1f} |")
    lines.append(f"| honest only (6, mean) | {result['honest_only_final']:.3f} |" + " |" * len(cols))
    return "\n".join(lines)


def plot(result: dict, labels: list[str], path: Path) -> str:
    cols = result["config"]["attacks"]
    plt = plots.pyplot()
    if plt is None:
        return plots.SKIPPED
    grid = np.array([[result["final_accuracy"][s][a] for a in cols] for s in labels])
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(labels) + 2))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=20)
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(cols)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    cfg = result["config"]
    ax.set_title(
        f"final held-out accuracy, digits, {cfg['contributors']} contributors "
        f"({len(cfg['attackers'])} attackers), {cfg['rounds']} rounds; "
        f"honest only: {result['honest_only_final']:.3f}",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, fraction=0.03)
    return plots.save(fig, path)


if __name__ == "__main__":
    main()
