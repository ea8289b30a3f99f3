"""Benchmark: low-rank (LoRA) patches against sparse top-k patches on the lm task, bytes per round at the
held-out BPB each reaches.

    python bench/lowrank.py            # default lm size; ~4 minutes on 2 cores

* ``base``: the lm task's seeded init pre-trained ``--base-steps`` steps on every domain's training
  split (``potluck.tasks.pretrain``), the genesis contributors patch.
* One contributor (shard ``--shard``, default ``plays``) patches it for ``--rounds`` rounds of
  ``--steps`` local steps each, every round from the version the previous patch made:
  - **sparse**: the whole model trained (``LmTask.train``), the delta sent as top-k with error feedback
    (``ErrorFeedback``, int8 values) at each ``--densities`` value (what ``potluck join`` does);
  - **lowrank**: LoRA adapters on every 2-D matrix of the blocks (``LmTask.train_lowrank``), their
    factors sent as low-rank entries (int8) at each ``--ranks`` value (``potluck join --lowrank``).
  Every patch goes through the real codec: ``encode_update`` -> ``decode_update`` -> ``apply_update``,
  so ``bytes`` is the signed envelope's size and the model is what every node would hold.

Held-out BPB (lower is better) on the contributor's domain and overall after each round. JSON on
stdout, a markdown table on stderr.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from fnmatch import fnmatchcase

import numpy as np
import torch

from potluck.identity import NodeIdentity
from potluck.tasks import get_task, pretrain
from potluck.updates.apply import apply_update
from potluck.updates.codec import Update, decode_update, encode_update
from potluck.updates.lowrank import LowRankTensor, balance
from potluck.updates.sparsify import ErrorFeedback

TARGETS = "transformer.h.*.weight"  # with the 2-D filter: attention and MLP matrices


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def patch_rounds(task, base, data, args, kind: str, setting: float, identity: NodeIdentity) -> dict:
    state = dict(base)
    feedback = ErrorFeedback(setting, "int8") if kind == "sparse" else None
    targets = [n for n, t in base.items() if fnmatchcase(n, TARGETS) and t.ndim == 2]
    rounds = []
    for r in range(args.rounds):
        seed = args.seed * 100_003 + r
        if feedback is not None:
            trained, samples = task.train(state, data, steps=args.steps, seed=seed)
            delta = {k: np.subtract(trained[k], state[k], dtype=np.float32) for k in state}
            tensors = feedback.compress(delta)
        else:
            factors, samples = task.train_lowrank(state, data, steps=args.steps, seed=seed, rank=int(setting),
                                                  targets=targets)  # fmt: skip
            tensors = [LowRankTensor(n, state[n].shape, *balance(*factors[n])) for n in targets]
        update = Update("bench", r, "00" * 32, identity.public_key, r + 1, samples, tuple(tensors))
        envelope = encode_update(update, identity, "int8")
        state = apply_update(state, decode_update(envelope).update)
        scores = task.evaluate_domains(state)
        rounds.append({"round": r, "bytes": len(envelope), "bpb": scores})
        log(f"{kind} {setting}: round {r} {len(envelope)} bytes, {args.shard} bpb {scores[args.domain]:.4f}")
    return {"kind": kind, "setting": setting, "rounds": rounds,
            "bytes_per_round": float(np.mean([x["bytes"] for x in rounds])),
            "final_bpb": rounds[-1]["bpb"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shard", default="plays")
    ap.add_argument("--densities", default="0.003,0.01,0.03,0.1")
    ap.add_argument("--ranks", default="1,2,4,8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    args.domain = args.shard.split(":")[0]
    torch.set_num_threads(1)
    started = time.perf_counter()
    task = get_task("lm", {})
    base = pretrain(task, steps=args.base_steps, seed=args.seed)
    base_bpb = task.evaluate_domains(base)
    log(f"base after {args.base_steps} steps: {args.domain} bpb {base_bpb[args.domain]:.4f}")
    data = task.local_data(args.shard)
    identity = NodeIdentity.generate()
    runs = [
        patch_rounds(task, base, data, args, "sparse", float(d), identity) for d in args.densities.split(",")
    ]
    runs += [patch_rounds(task, base, data, args, "lowrank", int(k), identity) for k in args.ranks.split(",")]
    result = {
        "benchmark": "lowrank", "task": "lm", "params": task.num_params(), "machine": platform.machine(),
        "args": {k: v for k, v in vars(args).items() if k != "json"}, "base_bpb": base_bpb, "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    log(f"\n| patch | bytes per round | {args.domain} BPB after {args.rounds} rounds | overall BPB |")
    log("|---|---|---|---|")
    log(f"| none (base) | 0 | {base_bpb[args.domain]:.4f} | {base_bpb['overall']:.4f} |")
    for run in runs:
        name = (
            f"sparse top-k, density {run['setting']}"
            if run["kind"] == "sparse"
            else f"LoRA rank {run['setting']}"
        )
        final = run["final_bpb"]
        log(f"| {name} | {run['bytes_per_round']:.0f} | {final[args.domain]:.4f} | {final['overall']:.4f} |")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
