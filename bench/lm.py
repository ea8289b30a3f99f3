"""Benchmark: a community patching a pre-trained language model, two contributors per domain.

    python bench/lm.py                              # ~10-15 minutes on 2 cores; plot in bench/out/lm.png
    python bench/lm.py --rounds 12 --local-steps 10 --density 0.01 --parts federated,retention

The `lm` task (a byte-level GPT-2; LM_ARGS, then `--task-arg`, set its size: 438k parameters by
default, and ``lora_lr`` 0.01) is pre-trained for `--pretrain-steps` on every domain's training
split: the run's genesis. Then, in process (no network; every potluck
update still goes through the real codec, signed and verified, and the exact merge every node runs):

``federated`` -- six contributors, two per domain (shards ``DOMAIN:0/2`` and ``DOMAIN:1/2``: the
domain's training documents split between them), each round training ``--local-steps`` from V_r,
each keeping its own Adam state across rounds as ``potluck join`` does (``--fresh-optimizer``: a
fresh Adam every round; LoRA adapters always start a fresh one):

* ``potluck``: ``sparse`` top-k deltas (``--density``, int8 values, error feedback), ``lowrank`` LoRA
  factors (``--rank``, int8; ``--shared-a``: one A per round for every contributor), ``hybrid`` (those
  factors, and the other tensors trained whole beside the adapters, sent at ``--extra-density``, 1:
  every entry, in the same update; ``potluck join --lowrank-extras``) and/or ``factored`` (the whole
  model trained as for sparse, each 2-D tensor sent as rank ``--rank`` SVD factors with error
  feedback, the others at ``--extra-density``), merged by ``fixedpoint.local_average`` weighted by
  sample count; ``--patch-steps`` gives them other local steps than FedAvg's; ``salient``: sparse,
  the top-k ranked by ``|residual| x g ** --salience``, ``g`` the contributor's own Adam gradient
  scale (``potluck join --salience``; the wire is unchanged), ``--scope model`` one top-k over the whole
  model (``potluck init --topk-scope model``) and ``--ef-decay`` the residual x that each round
  (``potluck join --residual-decay``). Explorations (bench/masked_feedback.py,
  bytes counted, not encoded as such): ``topkq`` top-k at ``--bits`` per value, ``masked`` a random
  mask shared by the round's contributors, ``blockq`` top blocks of ``--block`` entries, ``groupq`` the
  largest of each group of ``--block``; ``--ef-space``, ``--merge-norm``, ``--sticky``,
  ``--hot-density``, ``--gain``, ``--start-density``/``--start-rounds`` vary the sparse methods;
* ``fedavg``: the same rounds with dense fp32 deltas (bytes ``4 x params`` + a potluck envelope's
  non-payload bytes), merged the same way;
* ``pooled``: one model trained on all six shards with the same compute (6 x K steps a round);
* ``alone``: each contributor on its own shard only (K steps a round).

``--outer-momentum MU`` puts DiLoCo's outer optimizer (Nesterov momentum, lr ``--outer-lr``) on every
method's merged delta alike; potluck's nodes do not run one (an exploration flag).

``retention`` -- the three domains' groups each fine-tune the genesis on their domain for
``--finetune-steps`` (all of it at ``--finetune-lr``, or rank ``--finetune-rank`` LoRA adapters, or
anchored near the genesis, bench/anchored.py: ``--finetune-kl`` times the KL to the genesis on
``--finetune-samples`` of its own samples, the delta's RMS at most ``--finetune-radius``);
their deltas are merged once by mean, task arithmetic, TIES and DARE (potluck.merge; TIES and DARE
also at lambda n, so that they sum the deltas as task arithmetic does), and, for
comparison, by Fisher merging and a dataless localize-and-stitch (``--stitch-top``), and by the best
linear combination on an oracle grid (``--grid``). ``--merge-every K``: the same groups and steps
merged every K steps instead (``steps / K`` rounds, each group's Adam kept). A domain's gain is
genesis BPB minus BPB on that domain's held-out text; it keeps ``merged gain / own model's gain`` of
it. ``diagnosis``: what a domain keeps from its own delta / n alone, and what the others' / n give it.

BPB (bits per byte, lower is better) on each domain's fixed held-out text and overall (``--trace``:
also each federated method's overall BPB after every round). JSON on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import plots  # bench/plots.py: this script's folder is on the path
import torch
from anchored import anchored_finetune  # bench/anchored.py: the retention part's anchored fine-tunes
from lowrank_feedback import LowRankFeedback  # bench/lowrank_feedback.py: a method measured, not kept
from masked_feedback import MaskedFeedback  # bench/masked_feedback.py: an exploration

from potluck.hashing import version_hash
from potluck.identity import NodeIdentity
from potluck.merge import get_strategy, next_state
from potluck.rounds.fixedpoint import Layout, local_average
from potluck.tasks import get_task, pretrain
from potluck.tasks.corpus import DOMAINS
from potluck.updates.codec import Update, decode_update, encode_update, parse_update
from potluck.updates.lowrank import LowRankTensor, balance, expand
from potluck.updates.sparsify import ErrorFeedback, k_for, topk_indices

RUN = "bench-lm"
# small enough that 6 contributors x 12 rounds fit a few minutes of 2 cores
SMALL = {"n_layer": 2, "n_head": 2, "d_model": 64, "context": 64, "batch": 16, "eval_bytes": 4096}
# this bench's model on top of SMALL (bench/modules.py keeps SMALL): wide enough that a rank-2
# adapter costs < 1% of a dense delta; LoRA's adapters at their own, higher learning rate
LM_ARGS = ["d_model=128", "n_head=4", "lora_lr=0.01"]
MERGES = {
    "mean": ("mean", {}),
    "task_arithmetic": ("task_arithmetic", {"lambda": 1.0}),
    "ties": ("ties", {"k": 20, "lambda": 1.0}),
    "dare": ("dare", {"p": 0.5, "lambda": 1.0}),
}


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def seed_of(seed: int, round_: int, who: int) -> int:
    return (seed << 40) | (round_ << 16) | who


def federated(task, genesis, datas, args) -> dict:
    n, params = len(datas), sum(v.size for v in genesis.values())
    layout = Layout.from_state(genesis)
    identities = [NodeIdentity.generate() for _ in datas]
    targets = [k for k, v in sorted(genesis.items()) if v.ndim == 2 and fnmatchcase(k, args.targets)]
    feedback = {
        "sparse": [ErrorFeedback(args.density, args.values, args.scope) for _ in datas],
        "salient": [ErrorFeedback(args.density, args.values, args.scope) for _ in datas],
        "hybrid": [ErrorFeedback(args.extra_density, args.values, args.scope) for _ in datas],
        "factored": [
            LowRankFeedback(args.rank, targets, ErrorFeedback(args.extra_density, args.values, args.scope))
            for _ in datas
        ],
        "masked": [MaskedFeedback(args.density, args.bits, "shared") for _ in datas],
        "topkq": [MaskedFeedback(args.density, args.bits, "topk", args.sticky, args.gain) for _ in datas],
        "groupq": [MaskedFeedback(args.density, args.bits, f"group{args.block}") for _ in datas],
        "blockq": [MaskedFeedback(args.density, args.bits, f"block{args.block}") for _ in datas],
    }
    own_decay = args.ef_space == "delta"  # sparse, salient: ErrorFeedback's decay (join --residual-decay)
    for fb in feedback["sparse"] + feedback["salient"]:
        fb.decay = args.ef_decay if own_decay else 1.0
    methods = ["fedavg", *args.patches.split(",")]
    trace: dict[str, list[float]] = {m: [] for m in methods}
    states = {m: dict(genesis) for m in methods}
    # each contributor's own Adam state per method (--keep-optimizer), and each method's outer momentum
    opts = {m: [None if args.fresh_optimizer else {} for _ in datas] for m in methods}
    momenta: dict[str, dict] = {m: {} for m in methods}
    hots: dict[str, dict] = {}
    sent = dict.fromkeys(methods, 0)
    overheads: list[int] = []
    for r in range(args.rounds):
        for method in methods:
            state, carried = states[method], []
            base = version_hash(state)
            steps = args.local_steps if method == "fedavg" else args.patch_steps or args.local_steps
            for c, data in enumerate(datas):
                seed = seed_of(args.seed, r, c)
                if method in ("lowrank", "hybrid"):  # LoRA adapters from V_r, their factors published
                    extras = [k for k in state if k not in targets] if method == "hybrid" else []
                    factors, samples = task.train_lowrank(
                        state, data, steps=steps, seed=seed, rank=args.rank, targets=targets, extras=extras,
                        a_seed=seed_of(args.seed, r, 0) if args.shared_a else None,
                    )  # fmt: skip
                    tensors = tuple(LowRankTensor(k, state[k].shape, *balance(*factors[k])) for k in targets)
                    if extras:  # trained whole beside the adapters: sparse entries in the same update
                        tensors += tuple(feedback[method][c].compress({k: factors[k] for k in extras}))
                else:
                    start = state
                    fb = feedback.get(method, [None] * n)[c]
                    decays_itself = own_decay and method in ("sparse", "salient")
                    if method != "fedavg" and args.ef_decay != 1.0 and not decays_itself:
                        for e in fb.residual.values():
                            e *= np.float32(args.ef_decay)
                    if method != "fedavg" and args.ef_space == "model" and fb.residual:
                        # model-space error feedback: train on from V_r plus what is not yet sent
                        start = {k: state[k] + fb.residual[k] for k in state}
                    new, samples = task.train(start, data, steps=steps, seed=seed, optimizer=opts[method][c])
                    delta = {k: new[k] - start[k] for k in state}
                    if method == "fedavg":
                        carried.append((samples, delta))
                        continue
                    if method in ("sparse", "salient") and args.start_rounds:  # potluck's start_density
                        fb.density = args.start_density if r < args.start_rounds else args.density
                    if method == "salient":  # top-k by |residual| x own Adam gradient scale ** s, as join
                        scales = task.gradient_scale(opts[method][c])
                        fb.weights = {k: g**args.salience for k, g in scales.items()}
                    if method in ("masked", "topkq", "blockq", "groupq"):
                        tensors = tuple(fb.compress(delta, seed_of(args.seed, r, 0), hots.get(method)))
                    else:
                        tensors = tuple(fb.compress(delta))
                update = Update(RUN, r, base, identities[c].public_key, r + 1, samples, tensors)
                values = "int8" if method in ("lowrank", "hybrid") else args.values
                blob = encode_update(update, identities[c], values)
                sent[method] += len(blob)
                if method in ("masked", "topkq", "blockq", "groupq"):  # MaskedFeedback counts b-bit values
                    # and the indices a receiver could not derive; the int8 codec's payload is not counted
                    wire = sum(len(t.value_bytes) + len(t.scale_bytes) + len(t.index_bytes)
                               for t in parse_update(blob).tensors)  # fmt: skip
                    sent[method] += feedback[method][c].value_bytes - wire
                    feedback[method][c].value_bytes = 0
                overheads.append(len(blob) - sum(t.payload_size for t in parse_update(blob).tensors))
                carried.append((samples, decode_update(blob)))
            if method == "fedavg":
                merged = dense_average(state, carried)
            elif args.merge_norm == "senders":
                merged = senders_average(state, carried)
            else:
                merged, _ = local_average(
                    state, layout, carried, 1.0 if args.outer_momentum else args.outer_lr
                )
            if args.outer_momentum:
                merged = outer_step(state, merged, momenta[method], args)
            if args.hot_density and method == "topkq":  # the merged delta's largest: known to every node
                hots[method] = {
                    k: topk_indices(np.abs(merged[k] - v).reshape(-1), k_for(v.size, args.hot_density))
                    for k, v in state.items()
                }
            states[method] = merged
            if args.trace:
                trace[method].append(round(task.evaluate_domains(merged)["overall"], 4))
        log(f"  round {r + 1}/{args.rounds}" + (f" {trace}" if args.trace else ""))
    # FedAvg's dense fp32 deltas: 4 bytes a parameter plus a potluck envelope's non-payload bytes
    sent["fedavg"] = n * args.rounds * (4 * params + int(np.median(overheads)))
    out = {
        m: {"final": task.evaluate_domains(states[m]), "bytes_sent": sent[m], "rounds": args.rounds}
        for m in methods
    }
    out["envelope_overhead_bytes"] = int(np.median(overheads))
    if args.trace:
        out["trace"] = trace

    if "pooled" not in args.baselines.split(","):
        return out
    log("  pooled: all shards, the same compute")
    pooled, opt = task.local_data(None), None if args.fresh_optimizer else {}
    state = genesis
    for r in range(args.rounds):
        state, _ = task.train(
            state, pooled, steps=n * args.local_steps, seed=seed_of(args.seed, r, 999), optimizer=opt
        )
    out["pooled"] = {"final": task.evaluate_domains(state)}

    if "alone" not in args.baselines.split(","):
        return out
    log("  each contributor alone")
    alone = []
    for c, data in enumerate(datas):
        state, opt = genesis, None if args.fresh_optimizer else {}
        for r in range(args.rounds):
            state, _ = task.train(
                state, data, steps=args.local_steps, seed=seed_of(args.seed, r, c), optimizer=opt
            )
        alone.append(task.evaluate_domains(state))
    out["alone"] = {"final": alone, "mean_overall": float(np.mean([a["overall"] for a in alone]))}
    return out


def outer_step(state: dict, merged: dict, momentum: dict, args) -> dict:
    """DiLoCo's outer optimizer on the merged pseudo-gradient d = merged - state: Nesterov momentum
    m = mu m + d, next = state + lr (d + mu m), in float64 (the same for every method)."""
    mu, out = args.outer_momentum, {}
    for k, v in state.items():
        d = merged[k].astype(np.float64) - v
        m = momentum[k] = mu * momentum.get(k, 0.0) + d
        out[k] = (v + args.outer_lr * (d + mu * m)).astype(v.dtype)
    return out


def senders_average(state: dict, carried: list) -> dict:
    """Each coordinate: the weighted mean over the updates that sent it (float64; exploration only)."""
    num = {k: np.zeros(v.size) for k, v in state.items()}
    den = {k: np.zeros(v.size) for k, v in state.items()}
    for w, u in carried:
        for t in u.update.tensors:
            num[t.name][t.indices] += w * t.values.astype(np.float64)
            den[t.name][t.indices] += w
    return {
        k: (v.astype(np.float64) + (num[k] / np.maximum(den[k], 1)).reshape(v.shape)).astype(v.dtype)
        for k, v in state.items()
    }


def dense_average(state: dict, carried: list[tuple[int, dict]]) -> dict:
    """FedAvg: V + sum(w delta) / sum(w), in float64, back to float32."""
    total = sum(w for w, _ in carried)
    return {
        k: (v.astype(np.float64) + sum(w * d[k].astype(np.float64) for w, d in carried) / total).astype(
            v.dtype
        )
        for k, v in state.items()
    }


def finetune(task, genesis, args) -> list[tuple[dict, int]]:
    """Retention: each domain's group fine-tunes the genesis on its domain (``--finetune-steps``, the
    whole model at ``--finetune-lr`` or rank ``--finetune-rank`` LoRA); its model and sample count."""
    out = []
    for g, domain in enumerate(DOMAINS):
        log(f"  fine-tuning on {domain}")
        data = task.local_data(domain)
        if args.finetune_rank:  # LoRA on every 2-D tensor, expanded as every node would
            targets = [k for k, v in sorted(genesis.items()) if v.ndim == 2]
            factors, samples = task.train_lowrank(
                genesis,
                data,
                steps=args.finetune_steps,
                seed=100 + g,
                rank=args.finetune_rank,
                targets=targets,
            )
            tuned = {k: v + expand(*factors[k]) if k in factors else v for k, v in genesis.items()}
        elif args.finetune_kl or args.finetune_radius:  # near the genesis: bench/anchored.py
            tuned, samples = anchored_finetune(
                task, genesis, data, steps=args.finetune_steps, seed=100 + g, lr=task.lr,
                kl=args.finetune_kl, samples=args.finetune_samples, radius=args.finetune_radius,
            )  # fmt: skip
        else:
            tuned, samples = task.train(genesis, data, steps=args.finetune_steps, seed=100 + g)
        out.append((tuned, samples))
    return out


def retention(task, genesis, args, finetuner=None) -> dict:
    """The merges' ``gain_kept`` per domain, and ``diagnosis``: what a domain keeps from its own delta
    scaled by 1/n alone (``own_over_n``: the mean's dilution) and what the others' deltas / n alone give
    it (``others_over_n``: their transfer, negative when they interfere). ``finetuner``: the task the
    groups fine-tune with (the lm task at ``--finetune-lr``; the genesis is the same)."""
    base = task.evaluate_domains(genesis)
    tuned = finetune(finetuner or task, genesis, args)
    own = {d: task.evaluate_domains(state) for d, (state, _) in zip(DOMAINS, tuned, strict=True)}
    deltas = [{k: state[k] - genesis[k] for k in genesis} for state, _ in tuned]
    weights = [samples for _, samples in tuned]
    rows = {"genesis": base, **{f"{d} alone": s for d, s in own.items()}}

    def kept_of(scores: dict, d: str) -> float:
        return (base[d] - scores[d]) / (base[d] - own[d][d])

    kept = {}
    n = len(deltas)  # TIES and DARE also at lambda n: their merged deltas summed, as task arithmetic's
    sums = {
        f"{k}, lambda {n}": (MERGES[k][0], {**MERGES[k][1], "lambda": float(n)}) for k in ("ties", "dare")
    }
    for label, (name, strategy_args) in {**MERGES, **sums, **parse_merges(args.extra_merges)}.items():
        merged = get_strategy(name, strategy_args).merge(deltas, weights, round_seed=args.seed)
        scores = task.evaluate_domains(next_state(genesis, merged, 1.0))
        rows[f"merged: {label}"] = scores
        kept[label] = {d: kept_of(scores, d) for d in DOMAINS}
    # two merges outside potluck.merge, for comparison (bench/README.md#lm): Fisher-weighted averaging
    # and localize-and-stitch without data (each delta's top --stitch-top % by magnitude)
    fishers = [
        fisher_diag(task, state, task.local_data(d), args.seed)
        for d, (state, _) in zip(DOMAINS, tuned, strict=True)
    ]
    extra = {
        "fisher": fisher_merge(deltas, fishers),
        f"stitch {args.stitch_top:g}%": stitch(deltas, args.stitch_top),
    }
    for label, merged in extra.items():
        scores = task.evaluate_domains(shifted(genesis, [merged]))
        rows[f"merged: {label}"] = scores
        kept[label] = {d: kept_of(scores, d) for d in DOMAINS}
    if args.grid:
        kept["best of grid"] = grid_search(task, genesis, deltas, kept_of, args.grid)
    for every in [int(k) for k in args.merge_every.split(",") if k]:
        for label, scores in merged_rounds(finetuner or task, genesis, args, every).items():
            rows[f"merged: {label}"] = scores
            kept[label] = {d: kept_of(scores, d) for d in DOMAINS}
    diagnosis = {}
    for i, d in enumerate(DOMAINS):
        others = [delta for j, delta in enumerate(deltas) if j != i]
        diagnosis[d] = {
            "own_over_n": kept_of(task.evaluate_domains(shifted(genesis, [deltas[i]], 1 / n)), d),
            "others_over_n": kept_of(task.evaluate_domains(shifted(genesis, others, 1 / n)), d),
        }
    gains = {d: base[d] - own[d][d] for d in DOMAINS}
    return {"bpb": rows, "own_gain": gains, "gain_kept": kept, "diagnosis": diagnosis}


def merged_rounds(task, genesis: dict, args, every: int) -> dict[str, dict]:
    """The same groups and steps, merged every ``every`` steps instead of once: ``--finetune-steps //
    every`` rounds, in each every group trains ``every`` steps from the merged model (its own Adam kept
    across rounds, as ``potluck join`` does) and the deltas are merged by each of MERGES; BPB of each."""
    out = {}
    datas = [task.local_data(d) for d in DOMAINS]
    for label, (name, strategy_args) in (parse_merges(args.round_merges) or MERGES).items():
        log(f"  {label}, merged every {every} steps")
        strategy, state, opts = get_strategy(name, strategy_args), genesis, [{} for _ in datas]
        for r in range(args.finetune_steps // every):
            deltas, weights = [], []
            for g, data in enumerate(datas):
                new, samples = task.train(
                    state, data, steps=every, seed=seed_of(args.seed, r, 100 + g), optimizer=opts[g]
                )
                deltas.append({k: new[k] - state[k] for k in state})
                weights.append(samples)
            state = next_state(state, strategy.merge(deltas, weights, round_seed=args.seed + r), 1.0)
        out[f"{label}, every {every} steps"] = task.evaluate_domains(state)
    return out


def parse_merges(spec: str) -> dict[str, tuple[str, dict]]:
    """``--round-merges`` / ``--extra-merges``: "name[:key=value,...];..." (e.g. "ties:k=100;dare"),
    each on top of MERGES' defaults for that name; {} for ""."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, _, rest = part.partition(":")
        pairs = [kv.split("=", 1) for kv in rest.split(",") if kv]
        out[part] = (name, {**MERGES.get(name, (name, {}))[1], **{k: float(v) for k, v in pairs}})
    return out


def fisher_diag(task, state: dict, data, seed: int, batches: int = 16) -> dict:
    """The diagonal empirical Fisher of ``state`` on ``data``: the mean squared gradient of ``batches``
    seeded training batches (float64)."""
    rng = np.random.Generator(np.random.PCG64([seed, 11]))
    window = np.arange(task.context + 1)
    params = task._params(state, grad=True)
    out = {k: np.zeros(v.shape) for k, v in params.items()}
    for _ in range(batches):
        starts = rng.integers(0, len(data) - task.context, size=task.batch)
        chunk = torch.from_numpy(data.text[starts[:, None] + window].astype(np.int64))
        for v in params.values():
            v.grad = None
        logits = task.forward(params, chunk[:, :-1])
        torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1)
        ).backward()
        for k, v in params.items():
            out[k] += v.grad.double().numpy() ** 2 / batches
    return out


def fisher_merge(deltas: list[dict], fishers: list[dict]) -> dict:
    """Fisher merging (Matena & Raffel 2022): per coordinate ``sum(F_i d_i) / sum(F_i)`` (the mean where
    no group's Fisher is positive), each group's Fisher taken at its own fine-tuned model on its data."""
    out = {}
    for k in deltas[0]:
        total = sum(f[k] for f in fishers)
        weighted = sum(f[k] * d[k].astype(np.float64) for f, d in zip(fishers, deltas, strict=True))
        mean = sum(d[k].astype(np.float64) for d in deltas) / len(deltas)
        out[k] = np.where(total > 0, weighted / np.where(total > 0, total, 1.0), mean)
    return out


def stitch(deltas: list[dict], percent: float) -> dict:
    """Localize-and-stitch without data (He et al. 2024's dataless variant): each delta keeps its top
    ``percent``% of coordinates by magnitude (over the whole model); the kept values are averaged where
    masks overlap, kept as they are elsewhere."""
    keys = sorted(deltas[0])
    flat = [np.concatenate([d[k].astype(np.float64).ravel() for k in keys]) for d in deltas]
    kept = []
    for f in flat:
        mask = np.zeros(f.size, dtype=bool)
        mask[np.argsort(-np.abs(f), kind="stable")[: int(percent / 100 * f.size)]] = True
        kept.append(np.where(mask, f, 0.0))
    merged = sum(kept) / np.maximum(sum((k != 0).astype(np.float64) for k in kept), 1.0)
    out, at = {}, 0
    for k in keys:
        out[k] = merged[at : at + deltas[0][k].size].reshape(deltas[0][k].shape)
        at += deltas[0][k].size
    return out


def grid_search(task, genesis: dict, deltas: list[dict], kept_of, step: float) -> dict:
    """An upper bound for linear merges: ``sum(a_i d_i)`` for every ``a_i`` on the grid step, 2 step, ..,
    0.6; the combination whose worst domain keeps most, judged on the held-out text itself (an oracle)."""
    best: dict = {}
    grid = np.arange(step, 0.6 + 1e-9, step)
    for alphas in itertools.product(grid, repeat=len(deltas)):
        merged = {
            k: sum(a * d[k].astype(np.float64) for a, d in zip(alphas, deltas, strict=True)) for k in genesis
        }
        scores = task.evaluate_domains(shifted(genesis, [merged]))
        kept = {d: kept_of(scores, d) for d in DOMAINS}
        if not best or min(kept.values()) > min(best["kept"].values()):
            best = {"alphas": [round(float(a), 4) for a in alphas], "kept": kept}
    return best


def shifted(genesis: dict, deltas: list[dict], scale: float = 1.0) -> dict:
    """``genesis + scale * sum(deltas)`` in float64, cast back per tensor."""
    return {
        k: (v.astype(np.float64) + scale * sum(d[k].astype(np.float64) for d in deltas)).astype(v.dtype)
        for k, v in genesis.items()
    }


def finetune_task(task, task_args: dict, lr: float):
    """The lm task the retention groups fine-tune with: ``task`` itself, or a copy at learning rate ``lr``."""
    return get_task("lm", {**task_args, "lr": lr}) if lr else task


def lm_and_genesis(task_arg: list[str], pretrain_steps: int, seed: int) -> tuple[object, dict, dict]:
    """The lm task (SMALL, changed by ``KEY=VALUE`` items), its task args, and its pre-trained genesis."""
    task_args = dict(SMALL)
    for item in task_arg:
        key, _, value = item.partition("=")
        task_args[key] = type(SMALL.get(key, 0.0))(value)
    task = get_task("lm", task_args)
    log(f"lm {task_args}: {task.num_params()} params; pre-training {pretrain_steps} steps")
    return task, task_args, pretrain(task, steps=pretrain_steps, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="federated,retention")
    ap.add_argument(
        "--task-arg", action="append", default=[], metavar="KEY=VALUE", help="lm size (default: small)"
    )
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--patch-steps", type=int, default=0, help="potluck's local steps (0: --local-steps)")
    ap.add_argument("--baselines", default="pooled,alone", help="federated: besides FedAvg ('' for none)")
    ap.add_argument("--patches", default="sparse,lowrank", help="potluck's patch kinds to run")
    ap.add_argument("--density", type=float, default=0.01, help="sparse: top-k fraction (error feedback)")
    ap.add_argument("--values", choices=["int8", "fp16", "sign"], default="int8", help="sparse: value format")
    ap.add_argument(
        "--scope", choices=["tensor", "model"], default="tensor", help="sparse: top-k of each tensor or all"
    )
    ap.add_argument("--block", type=int, default=8, help="blockq: entries per block")
    ap.add_argument("--merge-norm", choices=["all", "senders"], default="all", help="patches' merge")
    ap.add_argument("--sticky", type=int, default=1, help="topkq: a mask chosen every K rounds, reused")
    ap.add_argument("--hot-density", type=float, default=0.0, help="topkq: + the merged delta's top (free)")
    ap.add_argument("--gain", type=float, default=1.0, help="topkq, 1 bit: scale = gain x mean|v|")
    ap.add_argument("--start-density", type=float, default=0.0, help="sparse: density of the first rounds")
    ap.add_argument("--start-rounds", type=int, default=0, help="sparse: rounds at --start-density")
    ap.add_argument("--salience", type=float, default=0.5, help="salient: top-k of |e| g^s (join --salience)")
    ap.add_argument("--trace", action="store_true", help="overall BPB of every method after every round")
    ap.add_argument("--bits", type=int, default=8, help="masked, topkq: bits per value")
    ap.add_argument("--rank", type=int, default=2, help="lowrank: adapter rank")
    ap.add_argument("--targets", default="*", help="lowrank, factored: glob of the 2-D tensors adapted")
    ap.add_argument("--shared-a", action="store_true", help="lowrank, hybrid: one A per round for all")
    ap.add_argument(
        "--extra-density", type=float, default=1.0, help="factored: top-k density of the other tensors"
    )
    ap.add_argument(
        "--ef-space", choices=["delta", "model"], default="delta",
        help="sparse: error feedback added to the next delta, or trained from (V_r + residual)",
    )  # fmt: skip
    ap.add_argument(
        "--ef-decay",
        type=float,
        default=1.0,
        help="sparse: residual x this each round (join --residual-decay)",
    )
    ap.add_argument("--outer-lr", type=float, default=1.0, help="potluck's merge lr (FedAvg uses 1)")
    ap.add_argument(
        "--fresh-optimizer",
        action="store_true",
        help="a fresh Adam every round (default: each keeps its own)",
    )
    ap.add_argument(
        "--outer-momentum", type=float, default=0.0, help="Nesterov momentum on the merged delta (all)"
    )
    ap.add_argument("--finetune-steps", type=int, default=120)
    ap.add_argument("--finetune-rank", type=int, default=0, help="retention: LoRA rank (0: full fine-tuning)")
    ap.add_argument(
        "--finetune-lr", type=float, default=0.0, help="retention: full fine-tunes' Adam lr (0: the task's)"
    )
    for flag, kind, default, text in (  # the anchored fine-tunes of bench/anchored.py
        ("--finetune-kl", float, 0.0, "retention: KL weight on genesis samples (0: none)"),
        ("--finetune-samples", int, 1024, "retention: genesis samples for the KL"),
        ("--finetune-radius", float, 0.0, "retention: the delta's RMS at most this (0: any)"),
    ):
        ap.add_argument(flag, type=kind, default=default, help=text)
    ap.add_argument("--stitch-top", type=float, default=10.0, help="retention: stitch's top-k percent")
    ap.add_argument(
        "--grid", type=float, default=0.0, help="retention: oracle grid step (0: none; 0.1: 216 evals)"
    )
    ap.add_argument(
        "--merge-every", default="10", help="retention: also merge every K steps (comma list; '' for none)"
    )
    ap.add_argument(
        "--round-merges",
        default="",
        help='retention, merged every K steps: "name[:key=value,...];..." (default: mean, task_arithmetic, '
        "ties, dare)",
    )
    ap.add_argument(
        "--extra-merges", default="", help="retention, once: more merges, in --round-merges' form"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/out/lm.png", help="PNG plot ('' for none)")
    ap.add_argument("--json", default="", help="also write the JSON to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    task, task_args, genesis = lm_and_genesis([*LM_ARGS, *args.task_arg], args.pretrain_steps, args.seed)
    result: dict = {
        "benchmark": "lm",
        "config": {**vars(args), "task_args": task_args, "params": task.num_params()},
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.machine(),
        },
        "genesis": task.evaluate_domains(genesis),
    }
    parts = set(args.parts.split(","))
    if "federated" in parts:
        log("federated: 6 contributors, 2 per domain")
        datas = [task.local_data(f"{d}:{j}/2") for d in DOMAINS for j in range(2)]
        fed = federated(task, genesis, datas, args)
        f = fed["fedavg"]
        fed["summary"] = {}
        for patch in args.patches.split(","):
            p = fed[patch]
            gap = p["final"]["overall"] / f["final"]["overall"] - 1
            fed["summary"][patch] = {
                "overall_bpb": p["final"]["overall"],
                "fedavg_overall_bpb": f["final"]["overall"],
                "vs_fedavg_overall": gap,
                "bytes_ratio": f["bytes_sent"] / p["bytes_sent"],
                "every_domain_improves": all(p["final"][d] < result["genesis"][d] for d in DOMAINS),
                "target_within_2pct_of_fedavg": gap <= 0.02,
                "target_100x_fewer_bytes": f["bytes_sent"] >= 100 * p["bytes_sent"],
            }
        result["federated"] = fed
    if "retention" in parts:
        log("retention: one group per domain, merged")
        finetuner = finetune_task(task, task_args, args.finetune_lr)
        result["retention"] = retention(task, genesis, args, finetuner)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    if args.out and "federated" in result:
        result["plot"] = plot(result, Path(args.out))
    emit(result, args.json, table(result))


def emit(result: dict, json_path: str, table_text: str) -> None:
    """The JSON on stdout (and in ``json_path`` when given), the table on stderr."""
    text = json.dumps(result, indent=1)
    if json_path:
        Path(json_path).write_text(text + "\n")
    print(text)
    log(table_text)


def table(result: dict) -> str:
    head = "| model | " + " | ".join(DOMAINS) + " | overall |"
    lines = [head, "|---" * (len(DOMAINS) + 2) + "|"]

    def row(name: str, s: dict) -> None:
        lines.append(f"| {name} | " + " | ".join(f"{s[d]:.3f}" for d in (*DOMAINS, "overall")) + " |")

    row("genesis", result["genesis"])
    fed = result.get("federated")
    if fed:
        for m in (*result["config"]["patches"].split(","), "fedavg", "pooled"):
            if m in fed:
                row(m, fed[m]["final"])
        if "alone" in fed:
            alone = fed["alone"]["final"]
            row("alone (mean)", {d: float(np.mean([a[d] for a in alone])) for d in (*DOMAINS, "overall")})
    for name, s in result.get("retention", {}).get("bpb", {}).items():
        if name != "genesis":  # already the first row
            row(name, s)
    return "\n".join([*lines, *retention_table(result.get("retention"))])


def retention_table(ret: dict | None) -> list[str]:
    """Each merge's share of each domain's own gain kept, in percent (with the oracle grid's best), and
    the diagnosis: each domain's own delta / n alone, and the others' deltas / n alone."""
    if not ret:
        return []
    lines = ["", "| gain kept | " + " | ".join(DOMAINS) + " | worst |", "|---" * (len(DOMAINS) + 2) + "|"]

    def row(label: str, k: dict) -> None:
        cells = " | ".join(f"{100 * k[d]:.0f}%" for d in DOMAINS)
        lines.append(f"| {label} | {cells} | {100 * min(k.values()):.0f}% |")

    for label, kept in ret["gain_kept"].items():
        row(f"{label} {kept['alphas']}" if "alphas" in kept else label, kept.get("kept", kept))
    for key in ("own_over_n", "others_over_n"):
        row(f"diagnosis: {key}", {d: diag[key] for d, diag in ret["diagnosis"].items()})
    return lines


def plot(result: dict, path: Path) -> str:
    plt = plots.pyplot()
    if plt is None:
        return plots.SKIPPED
    fed = result["federated"]
    patches = result["config"]["patches"].split(",")
    names = ["genesis", *patches, *(m for m in ("fedavg", "pooled") if m in fed)]
    scores = [result["genesis"], *(fed[m]["final"] for m in names[1:])]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x, width = np.arange(len(DOMAINS) + 1), 0.8 / len(names)
    for i, (name, s) in enumerate(zip(names, scores, strict=True)):
        label = (
            f"{name} ({fed['summary'][name]['bytes_ratio']:.0f}x fewer bytes)" if name in patches else name
        )
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width, [s[d] for d in (*DOMAINS, "overall")], width, label=label
        )
    ax.set_xticks(x, [*DOMAINS, "overall"])
    ax.set_ylim(min(min(s.values()) for s in scores) - 0.2, max(max(s.values()) for s in scores) + 0.1)
    ax.set_ylabel("held-out bits per byte (lower is better)")
    ax.set_title(f"lm, 6 contributors (2 per domain), {result['config']['rounds']} rounds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return plots.save(fig, path)


if __name__ == "__main__":
    main()
