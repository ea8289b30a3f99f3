"""Benchmark: federated training on non-IID digits shards, potluck's sparse updates against dense FedAvg.

    python bench/federated.py                      # wall time: the JSON's wall_s (bench/README.md)
    python bench/federated.py --rounds 60 --local-steps 20 --density 0.01 --values sign --scope model

In-process simulation (no network), but every potluck update goes through the real pipeline a
contributor and a keeper run: ``task.train`` from the shared version V_r for K local steps, the delta
``new - V_r`` into the contributor's :class:`ErrorFeedback` (top-k of the model or of each tensor,
sign/int8/fp16 values, the quantization error kept in the residual), :func:`encode_update` (signed
with the contributor's Ed25519 key), :func:`decode_update` (signature verified), and the merge
:func:`potluck.rounds.fixedpoint.local_average` with weights ``min(sample_count, weight_cap)``:
``V_{r+1} = V_r + outer_lr * sum(w_u delta_u) / sum(w_u)``, bit for bit what every node computes.

Methods, side by side from the same genesis and the same shards:

* ``potluck``: the above. Bytes = the encoded envelope sizes (what goes on the wire per update).
* ``fedavg``: dense FedAvg: same rounds and local steps, the full fp32 delta, no error feedback,
  merged by the same ``local_average`` with outer_lr 1. The codec has no fp32 value format, so its
  bytes are computed: ``4 * params + overhead``, the overhead being a potluck envelope's size minus
  its payload (indices, values, scales), i.e. the same header, names, shapes and signature.
* ``central``: one model trained on the union of the shards (all training data) with the same total
  compute: contributors x rounds x local steps SGD steps of the same batch size.
* ``alone``: each contributor trains on its own shard only, rounds x local steps (its own share of
  the compute); mean and best held-out accuracy.

All accuracies are on the task's fixed held-out test split. ``target`` X = central's final accuracy
minus ``--gap`` (3 points); ``bytes_to_target`` is the total contributors sent (all of them, all
rounds up to and including the first round whose merged version reached X), or null ("never").
Per-round curves are in the JSON; ``--out`` sets the PNG (accuracy vs round and vs bytes sent).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import plots  # bench/plots.py: this script's folder is on the path
import torch

from potluck.hashing import version_hash
from potluck.identity import NodeIdentity
from potluck.rounds.fixedpoint import Layout, local_average
from potluck.tasks import get_task
from potluck.updates.codec import SparseTensor, Update, decode_update, encode_update, parse_update
from potluck.updates.sparsify import SCOPES, ErrorFeedback, scheduled_density

RUN = "bench-federated"


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def train_seed(seed: int, round_: int, contributor: int) -> int:
    return (seed << 40) | (round_ << 16) | contributor


def first_reaching(acc: list[float], target: float) -> int | None:
    for r, a in enumerate(acc):
        if a >= target:
            return r
    return None


def simulate(task, datas, genesis, args, *, sparse: bool, outer_lr: float, identities) -> dict:
    """One federated run; returns per-round accuracy, bytes, and extras."""
    layout = Layout.from_state(genesis)
    state = {k: v.copy() for k, v in genesis.items()}
    feedback = [ErrorFeedback(args.density, args.values, args.scope) for _ in datas]
    schedule = (args.density, args.start_density, args.start_rounds)
    acc, sent, overheads = [task.evaluate(state)], [0], []
    residual = []
    t_train = t_codec = t_merge = 0.0
    for r in range(args.rounds):
        base = version_hash(state)
        carried = []
        round_bytes = 0
        for c, data in enumerate(datas):
            t0 = time.perf_counter()
            new, samples = task.train(state, data, steps=args.local_steps, seed=train_seed(args.seed, r, c))
            delta = {k: new[k] - state[k] for k in state}
            t1 = time.perf_counter()
            weight = min(samples, args.weight_cap)
            if sparse:
                feedback[c].density = scheduled_density(r, *schedule)
                tensors = feedback[c].compress(delta)
                update = Update(RUN, r, base, identities[c].public_key, r + 1, samples, tuple(tensors))
                blob = encode_update(update, identities[c], args.values)
                round_bytes += len(blob)
                if r == 0:
                    parsed = parse_update(blob)
                    overheads.append(len(blob) - sum(t.payload_size for t in parsed.tensors))
                carried.append((weight, decode_update(blob)))
            else:
                tensors = tuple(
                    SparseTensor(k, tuple(v.shape), np.arange(v.size, dtype=np.int64), v.reshape(-1))
                    for k, v in sorted(delta.items())
                )
                carried.append(
                    (weight, Update(RUN, r, base, identities[c].public_key, r + 1, samples, tensors))
                )
            t2 = time.perf_counter()
            t_train += t1 - t0
            t_codec += t2 - t1
        t0 = time.perf_counter()
        state, _ = local_average(state, layout, carried, outer_lr)
        t_merge += time.perf_counter() - t0
        acc.append(task.evaluate(state))
        sent.append(round_bytes)
        if sparse:
            residual.append(float(np.mean([f.residual_norm() for f in feedback])))
        if (r + 1) % max(1, args.rounds // 10) == 0 or r + 1 == args.rounds:
            log(f"  {'potluck' if sparse else 'fedavg'} round {r + 1}/{args.rounds}: acc {acc[-1]:.4f}")
    out = {
        "accuracy": acc,
        "round_bytes": sent,
        "time_s": {"train": round(t_train, 2), "codec": round(t_codec, 2), "merge": round(t_merge, 2)},
    }
    if sparse:
        out["overheads"] = overheads
        out["mean_residual_norm"] = residual
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contributors", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--local-steps", type=int, default=20)
    ap.add_argument("--density", type=float, default=0.01)
    ap.add_argument("--values", choices=["int8", "fp16", "sign"], default="sign")
    ap.add_argument("--start-density", type=float, default=0.0, help="density of the first rounds (0: off)")
    ap.add_argument("--start-rounds", type=int, default=0, help="rounds that use --start-density")
    ap.add_argument("--scope", choices=SCOPES, default="model", help="top-k of each tensor or of the model")
    ap.add_argument("--outer-lr", type=float, default=1.0, help="potluck's outer lr (FedAvg uses 1)")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--shards", default="label", help="'label' (I/N) or 'dirichlet:ALPHA'")
    ap.add_argument("--weight-cap", type=int, default=1 << 20)
    ap.add_argument("--gap", type=float, default=0.03, help="target X = central accuracy - gap")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/out/federated.png", help="PNG plot ('' for none)")
    ap.add_argument("--json", default="", help="also write the JSON to this file")
    args = ap.parse_args()

    torch.set_num_threads(1)
    task_args = {"hidden": args.hidden, "lr": args.lr, "batch": args.batch, "momentum": args.momentum}
    task = get_task("digits", task_args)
    genesis = task.init_state(args.seed)
    n = args.contributors
    specs = [f"{i}/{n}" if args.shards == "label" else f"{args.shards}:{i}/{n}" for i in range(n)]
    datas = [task.local_data(s, args.seed) for s in specs]
    identities = [NodeIdentity.generate() for _ in range(n)]
    params = sum(v.size for v in genesis.values())
    log(f"digits hidden={args.hidden}: {params} params; shards {[len(d) for d in datas]}")
    started = time.perf_counter()

    log("potluck (sparse, error feedback, real codec)")
    potluck = simulate(task, datas, genesis, args, sparse=True, outer_lr=args.outer_lr, identities=identities)
    log("dense FedAvg")
    fedavg = simulate(task, datas, genesis, args, sparse=False, outer_lr=1.0, identities=identities)

    log("centralized, same total compute")
    all_data = task.local_data(None, args.seed)
    state, central_acc = genesis, [task.evaluate(genesis)]
    for r in range(args.rounds):  # one "round" of compute = contributors x local steps
        state, _ = task.train(state, all_data, steps=n * args.local_steps, seed=train_seed(args.seed, r, 999))
        central_acc.append(task.evaluate(state))

    log("each contributor alone on its shard")
    alone_final = []
    alone_curves = []
    for c, data in enumerate(datas):
        state, curve = genesis, [task.evaluate(genesis)]
        for r in range(args.rounds):
            state, _ = task.train(state, data, steps=args.local_steps, seed=train_seed(args.seed, r, c))
            curve.append(task.evaluate(state))
        alone_curves.append(curve)
        alone_final.append(curve[-1])
    alone_mean = np.mean(alone_curves, axis=0).tolist()

    overhead = int(np.median(potluck["overheads"]))
    dense_bytes = 4 * params + overhead
    fedavg["round_bytes"] = [0] + [n * dense_bytes] * args.rounds
    target = central_acc[-1] - args.gap
    methods = {}
    for name, run in (("potluck", potluck), ("fedavg", fedavg)):
        cum = np.cumsum(run["round_bytes"]).tolist()
        hit = first_reaching(run["accuracy"], target)
        run["cumulative_bytes"] = cum
        methods[name] = {
            "final_accuracy": run["accuracy"][-1],
            "mean_accuracy_last10": float(np.mean(run["accuracy"][-10:])),
            "best_accuracy": max(run["accuracy"]),
            "bytes_per_contributor_per_round": sum(run["round_bytes"]) / (n * args.rounds),
            "round_reaching_target": hit,
            "bytes_to_target": cum[hit] if hit is not None else None,
            "total_bytes": cum[-1],
            "time_s": run["time_s"],
        }
    methods["central"] = {
        "final_accuracy": central_acc[-1],
        "mean_accuracy_last10": float(np.mean(central_acc[-10:])),
        "best_accuracy": max(central_acc),
        "round_reaching_target": first_reaching(central_acc, target),
    }
    methods["alone"] = {
        "mean_final_accuracy": float(np.mean(alone_final)),
        "best_final_accuracy": float(np.max(alone_final)),
        "final_accuracies": alone_final,
    }
    p, f = methods["potluck"], methods["fedavg"]
    per_round_ratio = f["bytes_per_contributor_per_round"] / p["bytes_per_contributor_per_round"]
    to_target_ratio = (
        f["bytes_to_target"] / p["bytes_to_target"]
        if p["bytes_to_target"] and f["bytes_to_target"] is not None
        else None
    )
    accuracy_gap = f["final_accuracy"] - p["final_accuracy"]
    result = {
        "benchmark": "federated",
        "config": {
            **vars(args),
            "task": "digits",
            "task_args": task_args,
            "shard_specs": specs,
            "shard_sizes": [len(d) for d in datas],
            "shard_labels": [sorted(set(d.y.tolist())) for d in datas],
            "params": int(params),
            "fedavg_outer_lr": 1.0,
            "central_steps": n * args.local_steps * args.rounds,
            "envelope_overhead_bytes": overhead,
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.machine(),
        },
        "target_accuracy": target,
        "methods": methods,
        "summary": {
            "potluck_final": p["final_accuracy"],
            "fedavg_final": f["final_accuracy"],
            "central_final": central_acc[-1],
            "alone_mean_final": methods["alone"]["mean_final_accuracy"],
            "alone_best_final": methods["alone"]["best_final_accuracy"],
            "fedavg_minus_potluck_points": 100 * accuracy_gap,
            "fedavg_minus_potluck_points_last10": 100
            * (f["mean_accuracy_last10"] - p["mean_accuracy_last10"]),
            "bytes_ratio_per_round": per_round_ratio,
            "bytes_ratio_to_target": to_target_ratio,
            "target_accuracy_within_1_point": bool(accuracy_gap <= 0.01),
            "target_300x_fewer_bytes_to_X": bool(to_target_ratio is not None and to_target_ratio >= 300),
        },
        "curves": {
            "potluck_accuracy": potluck["accuracy"],
            "potluck_cumulative_bytes": potluck["cumulative_bytes"],
            "potluck_mean_residual_norm": potluck["mean_residual_norm"],
            "fedavg_accuracy": fedavg["accuracy"],
            "fedavg_cumulative_bytes": fedavg["cumulative_bytes"],
            "central_accuracy": central_acc,
            "alone_mean_accuracy": alone_mean,
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if args.out:
        result["plot"] = plot(result, Path(args.out))
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    s = result["summary"]
    log(
        f"final: potluck {s['potluck_final']:.4f}, fedavg {s['fedavg_final']:.4f}, central "
        f"{s['central_final']:.4f}, alone mean {s['alone_mean_final']:.4f}; bytes/round ratio "
        f"{per_round_ratio:.1f}x, to X={target:.4f}: {to_target_ratio}"
    )


def plot(result: dict, path: Path) -> str:
    plt = plots.pyplot()
    if plt is None:
        return plots.SKIPPED
    c, cfg = result["curves"], result["config"]
    rounds = np.arange(len(c["potluck_accuracy"]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
    label = f"potluck (top {100 * cfg['density']:g}% of each {cfg['scope']}, {cfg['values']}, error feedback)"
    a.plot(rounds, c["potluck_accuracy"], label=label, lw=2)
    a.plot(rounds, c["fedavg_accuracy"], label="dense FedAvg (fp32)", lw=2)
    a.plot(rounds, c["central_accuracy"], label="centralized, same compute", ls="--")
    a.plot(rounds, c["alone_mean_accuracy"], label="alone on own shard (mean)", ls=":")
    a.axhline(result["target_accuracy"], color="grey", lw=0.8, label="X = central - 3 pts")
    a.set_xlabel("round")
    a.set_ylabel("held-out accuracy")
    a.set_ylim(0, 1)
    a.grid(alpha=0.3)
    a.legend(loc="lower right", fontsize=8)
    a.set_title(f"digits, {cfg['contributors']} contributors, non-IID shards, K={cfg['local_steps']}")
    for key, label in (("potluck", "potluck"), ("fedavg", "dense FedAvg")):
        x = np.asarray(c[f"{key}_cumulative_bytes"][1:], dtype=float)
        b.plot(x, c[f"{key}_accuracy"][1:], label=label, lw=2, marker="." if len(x) <= 30 else None)
    b.axhline(result["target_accuracy"], color="grey", lw=0.8, label="X")
    b.set_xscale("log")
    b.set_xlabel("total bytes sent by all contributors")
    b.set_ylabel("held-out accuracy")
    b.set_ylim(0, 1)
    b.grid(alpha=0.3, which="both")
    b.legend(loc="lower right", fontsize=8)
    ratio = result["summary"]["bytes_ratio_to_target"]
    b.set_title(f"accuracy vs bytes ({ratio:.0f}x fewer to reach X)" if ratio else "accuracy vs bytes")
    return plots.save(fig, path)


if __name__ == "__main__":
    main()
