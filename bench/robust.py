"""Benchmark: merge strategies against Byzantine contributors on non-IID digits (potluck.merge).

    python bench/robust.py --quick    # 8 strategies, 12 rounds
    python bench/robust.py --seeds 0,1,2 --strategies norm_filter,history_clip   # every attack, 3 seeds
    python bench/robust.py --seeds 0,1,2 --contributors 10 --attackers 7,8,9 --strategies history_clip
    python bench/robust.py --strategies norm_filter,history_clip:min_agree=-0.05 --attacks ipm_2,adaptive_ipm

The round loop of bench/federated.py (same task args, shards, K, density 2%, int8, error feedback,
real codec: encode with the contributor's Ed25519 key, decode with the signature checked), with the
merge done as the daemon does it (rounds/merging.py): ``get_strategy(name, args).merge(updates,
weights, round_seed=...)``, and for a history-aware strategy (``history_rounds``) also
``context=RoundContext(authors, previous, digest)``: the merged steps of the last rounds from the
float32 versions (``step_between``) and the digest of the round's sorted update ids; then
``next_state(V_r, merged, outer_lr)``. Contributors ``--attackers`` (default 6 and 7 of 8) are
attackers (bench/attacks.py): each computes the delta an honest contributor would (training on its
shard, its own error feedback; ``label_flip`` trains on flipped labels), then sends what its attack
makes of it through the same codec at the same density, claiming its real sample count. The adaptive
attacks run the strategy they face on candidate deltas, with the round's honest deltas, the round's
weights and the same context, and send the most damaging; they claim the largest honest sample
count. ``honest_only`` is the honest contributors alone with the ``mean`` strategy: the accuracy
robust merging should keep; ``weighted_mean`` under ``none`` is the plain rule an honest run is
compared with. ``--seeds`` change the initial weights and every
contributor's training stream (the shards are fixed); ``--contributor-momentum beta`` makes every
contributor send the momentum ``beta * m + (1 - beta) * delta`` of its deltas instead of the delta.
A strategy label is one of ``STRATEGIES`` or ``name:key=value:...``. Output: JSON on stdout (final
accuracy per strategy, attack and seed; drop against honest-only of the same seed, worst over the
seeds, per attack; honest-run cost against weighted_mean), a Markdown table on stderr, a heatmap of
the worst drops (``--out``). ``--sim`` adds a small simulation of the sparse-aware rule.

``--probe K`` (issue 15's probe-set option): a public probe set of K images per class of the
held-out test split (a fixed PCG64 stream; no contributor trains on it), named by its SHA-256
(``potluck.merge.probe``); every run of the invocation then scores accuracy on the rest of the test
split, and a label ``S+probe`` (e.g. ``history_clip+probe``) drops updates by their probe scores
(leave-one-out on the plain mean; ``probe_keep``: the lowest dropped while below ``-probe_frac`` x
the median absolute score, the rest scored again) before strategy S merges the rest;
``S+probe;record=D;strict=X`` also keeps a per-author record (``AuthorRecord`` with decay D, updated
on each round's real merge only, never on an adaptive attacker's trial merges): an author whose
record is positive is dropped only below ``-X`` x the median absolute score. The JSON's ``probe``
holds the set's hash and the scoring time per update.
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
from potluck.merge.context import RoundContext, entries_digest, step_between
from potluck.merge.probe import ProbeSet, probe_filter
from potluck.merge.record import AuthorRecord
from potluck.tasks import get_task
from potluck.tasks.data import LabeledData, evaluate_mlp
from potluck.updates.codec import SignedUpdate, SparseTensor, Update, decode_update, encode_update
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
    "history_clip": ("history_clip", {}),
}
QUICK = (
    "mean",
    "trimmed_mean",
    "coordinate_median",
    "centered_clip",
    "multi_krum",
    "geometric_median",
    "norm_filter",
    "history_clip",
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


def spec_of(label: str) -> tuple[str, dict]:
    """A label of STRATEGIES, or ``name:key=value:...`` (any strategy with explicit args)."""
    if label in STRATEGIES:
        return STRATEGIES[label]
    name, *pairs = label.split(":")
    return name, dict(p.split("=", 1) for p in pairs)


def strategy_of(label: str, cfg: dict | None = None):
    if "+probe" in label:  # S+probe, or S+probe;key=value;... (ProbeThen's options)
        inner, _, opts = label.partition("+probe")
        return ProbeThen(strategy_of(inner), cfg, dict(o.split("=", 1) for o in opts.split(";") if o))
    name, args = spec_of(label)
    return get_strategy(name, args)


PROBE_SEED = 15  # the probe set's images: part of the bench's definition, like the task's split


def probe_split(task, per_class: int) -> tuple[ProbeSet, LabeledData]:
    """(probe set, the rest of the test split): ``per_class`` test images of each class, fixed."""
    test = task.test_data()
    rng = np.random.Generator(np.random.PCG64(PROBE_SEED))
    idx = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(test.y == c))[:per_class] for c in range(10)])
    )
    rest = np.setdiff1d(np.arange(len(test)), idx)
    probe = ProbeSet(np.ascontiguousarray(test.x[idx]), test.y[idx].astype(np.int64), 10)
    return probe, LabeledData(np.ascontiguousarray(test.x[rest]), test.y[rest])


class ProbeThen:
    """The probe rule, then ``inner``: scores each delta on the probe set at ``base`` (set by the round
    loop), keeps ``probe_keep``'s and merges those with ``inner`` (the context's authors filtered alike)."""

    def __init__(self, inner, cfg: dict, opts: dict | None = None) -> None:
        self.inner, self.cfg = inner, cfg
        opts = opts or {}
        if set(opts) - {"record", "strict"}:
            raise SystemExit(f"+probe takes ;record=DECAY;strict=X only, got {sorted(opts)}")
        # ;record=DECAY: a per-author record over the merged rounds (AuthorRecord); an author it trusts
        # is dropped only below probe_cut with frac = strict (default inf: never)
        self.record = AuthorRecord(float(opts["record"])) if "record" in opts else None
        self.strict = float(opts.get("strict", "inf"))
        self.history_rounds = getattr(inner, "history_rounds", 0)
        self.base: dict[str, np.ndarray] = {}
        self.score_s, self.scored = 0.0, 0
        self.attackers: set[str] = set()  # authors (hex) the bench knows are attackers: for the tally only
        self.dropped = {"attacker": 0, "honest": 0}

    def keep(self, dense: list[dict[str, np.ndarray]], authors=None, commit: bool = False) -> list[int]:
        """The indices probe_filter keeps; with a record and the deltas' ``authors``, trusted authors
        are kept and ``commit`` (the round's real merge, not an attacker's trial) adds the round to it."""
        cfg, record = self.cfg, self.record if authors else None
        judged: dict[int, float] | None = {} if record is not None else None
        kept = probe_filter(
            self.base,
            dense,
            setup(cfg).layers,
            cfg["probe_set"],
            cfg["outer_lr"],
            cfg["probe_frac"],
            floor=cfg["probe_floor"],
            trusted=record.trusted(authors) if record is not None else (),
            judged=judged,
            strict=self.strict,
        )
        if commit and record is not None and judged is not None:
            record.add(authors, judged)
        return kept

    def merge(self, deltas, weights, *, round_seed: int, context: RoundContext | None = None):
        shapes = {k: v.shape for k, v in self.base.items()}
        dense = [dense_of(d.update.tensors, shapes) if isinstance(d, SignedUpdate) else d for d in deltas]
        started = time.perf_counter()
        real = all(isinstance(d, SignedUpdate) for d in deltas)
        keep = self.keep(dense, context.authors if context is not None else None, commit=real)
        # tally the round's merge only (signed updates), not an adaptive attack's trials (dense deltas)
        if real:
            self.score_s += time.perf_counter() - started
            self.scored += len(dense)
            for i in sorted(set(range(len(deltas))) - set(keep)):
                author = deltas[i].update.author.hex()
                self.dropped["attacker" if author in self.attackers else "honest"] += 1
        kept = [deltas[i] for i in keep]
        if context is not None and context.authors:
            context = RoundContext(tuple(context.authors[i] for i in keep), context.previous, context.digest)
        if context is None:
            return self.inner.merge(kept, [weights[i] for i in keep], round_seed=round_seed)
        return self.inner.merge(kept, [weights[i] for i in keep], round_seed=round_seed, context=context)


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


def merge_round(strategy, updates, weights, seed: int, steps: list, authors: tuple[str, ...]):
    """``strategy.merge`` as the daemon calls it: a history-aware strategy also gets the round's
    context (the merged steps of the last rounds from the versions, the digest of the update ids)."""
    rounds = getattr(strategy, "history_rounds", 0)
    if not rounds:
        return strategy.merge(updates, weights, round_seed=seed)
    ids = sorted(u.update_id for u in updates if hasattr(u, "update_id"))
    context = RoundContext(authors=authors, previous=tuple(steps[:rounds]), digest=entries_digest(ids))
    return strategy.merge(updates, weights, round_seed=seed, context=context)


def attack_deltas(attack: str, r: int, cfg: dict, env: dict) -> dict[int, dict[str, np.ndarray]]:
    """What each attacker sends in round r (dense, before the codec); ``env`` holds the round's honest
    deltas, the attackers' own, the strategy and its context (see bench/attacks.py)."""
    own, honest, shapes = env["own"], env["honest"], env["shapes"]
    order = sorted(own)
    if attack == "sign_flip":
        return {c: attacks.sign_flip(own[c]) for c in order}
    if attack == "random":
        return {c: attacks.random_direction(own[c], seed=train_seed(cfg["seed"], r, c)) for c in order}
    if attack.startswith("ipm_"):
        return {c: attacks.ipm(honest, float(attack.removeprefix("ipm_"))) for c in order}
    if attack == "replay":
        return {c: env["replay"][c](own[c]) for c in order}
    if attack == "mimic":
        if "mimic" not in env["memory"]:  # the honest contributor farthest from the honest mean
            flat = [attacks.flatten(d) for d in honest]
            mean = np.mean(flat, axis=0)
            env["memory"]["mimic"] = max(range(len(flat)), key=lambda i: float(np.sum((flat[i] - mean) ** 2)))
        return {c: honest[env["memory"]["mimic"]] for c in order}
    if attack == "probe_flip":  # knows the probe set: adds the least probe training that passes the cut
        rule = env["strategy"]
        if not isinstance(rule, ProbeThen):
            return dict(own)
        probe = cfg["probe_set"]
        sends = dict(own)
        for c in order:  # in turn, each against the others' choices so far
            new, _ = setup(cfg).train(
                env["state"],
                LabeledData(probe.x, probe.y),
                steps=cfg["local_steps"],
                seed=train_seed(cfg["seed"], r, c),
            )
            boost = {k: new[k] - env["state"][k] for k in new}

            def passes(x: dict[str, np.ndarray], c: int = c) -> bool:
                kept = dense_of(to_sparse(x, cfg["density"]), shapes)  # what the codec keeps of it
                deltas = honest + [kept if o == c else sends[o] for o in order]
                return len(honest) + order.index(c) in rule.keep(deltas, env["authors"])

            sends[c] = attacks.probe_flip(own[c], boost, passes)
        return sends
    if attack not in attacks.ADAPTIVE:  # label_flip: the flipped-label delta as is
        return dict(own)
    flat = [attacks.flatten(d) for d in honest]
    mean = np.mean(flat, axis=0)
    history = attacks.flatten(env["steps"][0]) if env["steps"] else None
    active = [order[r % 2]] if attack == "alternating" else order

    def sent_as(candidate: np.ndarray) -> dict[str, np.ndarray]:  # what the codec keeps of it
        return dense_of(to_sparse(attacks.unflatten(candidate, shapes), cfg["density"]), shapes)

    def damage(candidate: list[np.ndarray]) -> float:  # one flat delta per active attacker
        bad = dict(zip(active, (sent_as(x) for x in candidate), strict=True))
        deltas = honest + [bad.get(c, own[c]) for c in order]
        merged = merge_round(env["strategy"], deltas, env["weights"], 0, env["steps"], env["authors"])
        return float(np.sum(attacks.flatten(merged) * mean))

    tilt = getattr(env["strategy"], "min_cos", -1.0) > -1.0  # the attack knows the rule's code
    # covers: noise on each attacker's own support, norm-matched (no class information of its own)
    covers = [
        attacks.flatten(attacks.random_direction(own[c], train_seed(cfg["seed"], r, c), 1.0)) for c in active
    ]
    if attack == "adaptive_sign_flip":
        away = -sum(attacks.flatten(own[c]) for c in active)
        cands = attacks.candidates(away, flat, history, covers, tilt)
    elif attack in ("min_max", "min_sum"):
        cands = [[x] * len(active) for x in attacks.min_max(flat, total=attack == "min_sum")]
    else:  # adaptive_ipm, alternating
        cands = attacks.candidates(-mean, flat, history, covers, tilt)
    worst = dict(zip(active, attacks.worst_of(cands, damage), strict=True))
    return {c: sent_as(worst[c]) if c in active else own[c] for c in order}


def simulate(job: tuple[str, str, dict]) -> tuple[str, str, int, list[float], float]:
    """One run: strategy label x attack x seed; returns the per-round accuracy."""
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
        members, strategy = list(range(n)), strategy_of(label, cfg)
        if attack == "none":
            attackers = set()
    datas = {c: task.local_data(f"{c}/{n}") for c in members}
    for c in attackers if attack in ("label_flip", "probe_flip") else ():
        datas[c] = attacks.flip_labels(datas[c])
    ids = {c: NodeIdentity.generate() for c in members}
    feedback = {c: ErrorFeedback(cfg["density"], cfg["values"]) for c in members}
    beta = cfg["contributor_momentum"]
    momentum: dict[int, dict[str, np.ndarray]] = {}
    state = task.init_state(cfg["seed"])
    shapes = {k: v.shape for k, v in state.items()}
    env = {"shapes": shapes, "strategy": strategy, "steps": [], "memory": {}}
    env["replay"] = {c: attacks.Replay() for c in attackers}
    env["authors"] = tuple(ids[c].public_key.hex() for c in members)
    held_out = cfg.get("eval_set")

    def evaluate(st) -> float:  # with --probe: the test split less the probe images
        return task.evaluate(st) if held_out is None else evaluate_mlp(st, held_out, layers=task.layers)

    if isinstance(strategy, ProbeThen):
        strategy.attackers = {ids[c].public_key.hex() for c in attackers}
    acc = [evaluate(state)]
    for r in range(cfg["rounds"]):
        base = version_hash(state)
        env["state"] = state
        if isinstance(strategy, ProbeThen):
            strategy.base = state
        sent: dict[int, tuple[list[SparseTensor], int]] = {}
        for c in members:
            new, samples = task.train(
                state, datas[c], steps=cfg["local_steps"], seed=train_seed(cfg["seed"], r, c)
            )
            delta = {k: new[k] - state[k] for k in state}
            if beta:  # contributor-side momentum over rounds (Karimireddy, He & Jaggi 2021)
                prev = momentum.get(c)
                delta = {k: v if prev is None else beta * prev[k] + (1 - beta) * v for k, v in delta.items()}
                momentum[c] = delta
            sent[c] = (feedback[c].compress(delta), samples)
        env["honest"] = [dense_of(sent[c][0], shapes) for c in members if c not in attackers]
        env["own"] = {c: dense_of(sent[c][0], shapes) for c in attackers}
        if attack in attacks.ADAPTIVE:  # claim the largest honest count: what a weight cap lets through
            top = max((sent[c][1] for c in members if c not in attackers), default=0)
            sent.update({c: (sent[c][0], max(sent[c][1], top)) for c in attackers})
        claimed = {c: min(sent[c][1], cfg["weight_cap"]) for c in members}
        env["weights"] = [claimed[c] for c in members if c not in attackers] + [
            claimed[c] for c in sorted(attackers)
        ]
        for c, bad in attack_deltas(attack, r, cfg, env).items() if attackers else ():
            sent[c] = (to_sparse(bad, cfg["density"]), sent[c][1])
        updates, weights = [], []
        for c in members:
            tensors, samples = sent[c]
            update = Update(RUN, r, base, ids[c].public_key, r + 1, samples, tuple(tensors))
            updates.append(decode_update(encode_update(update, ids[c], cfg["values"])))
            weights.append(min(samples, cfg["weight_cap"]))
        seed = train_seed(cfg["seed"], r, 0xFFFF)
        merged = merge_round(strategy, updates, weights, seed, env["steps"], env["authors"])
        new_state = next_state(state, merged, cfg["outer_lr"])
        env["steps"] = [step_between(state, new_state, cfg["outer_lr"]), *env["steps"][:8]]
        state = new_state
        a = evaluate(state)
        acc.append(a if math.isfinite(a) else 0.0)
    if isinstance(strategy, ProbeThen) and strategy.scored:
        per = 1e3 * strategy.score_s / strategy.scored
        log(
            f"  probe scoring s{cfg['seed']} {label} {attack}: {per:.1f} ms/update ({strategy.scored}); "
            f"dropped {strategy.dropped}"
        )
    return label, attack, cfg["seed"], acc, time.perf_counter() - started


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
    ap.add_argument("--seeds", default="0", help="comma-separated: initial weights and training streams")
    ap.add_argument("--seed", type=int, default=None, help="one seed (the same as --seeds SEED)")
    ap.add_argument("--contributor-momentum", type=float, default=0.0, help="beta at contributors (0: off)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--strategies", default="", help="comma-separated subset of: " + ",".join(STRATEGIES))
    ap.add_argument(
        "--attacks",
        default="",
        help="comma-separated subset of " + ",".join(attacks.ATTACKS) + " (or ipm_EPS for any EPS)",
    )
    ap.add_argument("--out", default="bench/out/robust.png")
    ap.add_argument("--json", default="")
    ap.add_argument("--sim", action="store_true", help="also the sparse-aware simulation")
    ap.add_argument("--probe", type=int, default=0, help="probe images per class (0: off; see the doc)")
    ap.add_argument("--probe-frac", type=float, default=0.5, help="probe_keep's cut: x the median score")
    ap.add_argument("--probe-floor", type=float, default=0.0, help="probe_keep's cut at least -FLOOR (nats)")
    args = ap.parse_args()
    rounds = args.rounds or (12 if args.quick else 30)
    labels = list(QUICK if args.quick else STRATEGIES)
    default = [a for a in attacks.ATTACKS if args.probe or a != "probe_flip"]  # else a plain label flip
    cols = args.attacks.split(",") if args.attacks else default
    if args.strategies:
        labels = args.strategies.split(",")
    if any("+probe" in s for s in labels) and not args.probe:
        ap.error("a '+probe' strategy needs --probe K (probe images per class)")
    unknown = [s for s in labels if s.partition("+probe")[0] not in STRATEGIES and ":" not in s]
    unknown += [a for a in cols if a not in attacks.ATTACKS and not _is_ipm(a)]
    if unknown:
        ap.error(f"unknown strategy label(s) or attack(s) {unknown}; labels: {', '.join(STRATEGIES)}")
    seeds = [args.seed] if args.seed is not None else [int(x) for x in args.seeds.split(",")]
    cfg = {
        "rounds": rounds,
        "contributors": args.contributors,
        "attackers": [int(a) for a in args.attackers.split(",")],
        "local_steps": args.local_steps,
        "density": args.density,
        "values": args.values,
        "outer_lr": args.outer_lr,
        "contributor_momentum": args.contributor_momentum,
        "weight_cap": 1 << 20,
        "task_args": {"hidden": args.hidden, "lr": args.lr, "batch": 32, "momentum": 0.9},
        "probe_frac": args.probe_frac,
        "probe_floor": args.probe_floor,
    }
    probe_info = {}
    if args.probe:
        probe, rest = probe_split(setup(cfg), args.probe)
        cfg.update(probe_set=probe, eval_set=rest)
        probe_info = {"per_class": args.probe, "sha256": probe.digest(), "eval_images": len(rest)}
    started = time.perf_counter()
    runs = [("honest_only", "honest_only")] + [(s, a) for s in labels for a in cols]
    if "none" in cols and "weighted_mean" not in labels:  # the honest-run cost is against it
        runs.append(("weighted_mean", "none"))
    jobs = [(s, a, {**cfg, "seed": seed}) for seed in seeds for s, a in runs]
    log(f"{len(jobs)} runs of {rounds} rounds on {args.workers} workers")
    curves: dict[str, dict[str, dict[int, list[float]]]] = {}
    with mp.get_context("fork").Pool(args.workers) as pool:
        for done, (label, attack, seed, acc, secs) in enumerate(pool.imap_unordered(simulate, jobs), 1):
            curves.setdefault(label, {}).setdefault(attack, {})[seed] = acc
            log(f"  [{done}/{len(jobs)}] s{seed} {label:20s} {attack:18s} final {acc[-1]:.4f} ({secs:.1f} s)")
    result = summarize(curves, labels, cols, seeds)
    result.update(
        {
            "benchmark": "robust",
            "config": {
                **{k: v for k, v in cfg.items() if k not in ("probe_set", "eval_set")},
                "seeds": seeds,
                "strategies": {s: list(spec_of(s.partition("+probe")[0])) for s in labels},
                "attacks": cols,
            },
            "probe": probe_info,
            "machine": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "cpu": platform.machine(),
            },
        }
    )
    if args.sim:
        log("sparse-aware simulation")
        result["sparse_aware_simulation"] = sparse_simulation({**cfg, "seed": seeds[0]})
    result["curves"] = {
        s: {a: {str(k): v for k, v in c.items()} for a, c in d.items()} for s, d in curves.items()
    }
    result["wall_s"] = round(time.perf_counter() - started, 1)
    if args.out:
        result["plot"] = plot(result, labels, Path(args.out))
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    log(table(result, labels))


def summarize(curves: dict, labels: list[str], cols: list[str], seeds: list[int]) -> dict:
    """Finals per seed, drops against honest-only of the same seed (points), worst over seeds."""
    honest = {k: curves["honest_only"]["honest_only"][k][-1] for k in seeds}
    final = {s: {a: {k: curves[s][a][k][-1] for k in seeds} for a in cols} for s in labels}
    drop = {
        s: {a: round(max(100 * (honest[k] - final[s][a][k]) for k in seeds), 2) for a in cols} for s in labels
    }
    worst = {s: max(drop[s].values()) for s in labels}
    attacked = [a for a in cols if a != "none"]
    # recommended robust default: the robust rule (default args) with the smallest worst-case drop
    rec = min((s for s in ROBUST if s in final), key=lambda s: worst[s], default=labels[0])
    out = {
        "honest_only_final": honest,
        "final_accuracy": final,
        "drop_vs_honest_only_points": drop,
        "worst_drop_vs_honest_only_points": worst,
        "worst_drop_under_attack_points": {
            s: max((drop[s][a] for a in attacked), default=0.0) for s in labels
        },
        "recommended": {"strategy": rec, "args": spec_of(rec)[1], "worst_drop_points": worst[rec]},
    }
    if "none" in cols and "weighted_mean" in curves:
        plain = {k: curves["weighted_mean"]["none"][k][-1] for k in seeds}
        out["honest_run_cost_vs_weighted_mean_points"] = {
            s: round(max(100 * (plain[k] - final[s]["none"][k]) for k in seeds), 2) for s in labels
        }
    return out


def table(result: dict, labels: list[str]) -> str:
    """Markdown: each strategy's worst drop against honest-only (points, over the seeds) per attack."""
    cols = result["config"]["attacks"]
    head = "| strategy | " + " | ".join(cols) + " | worst drop (pts) |"
    lines = [head, "|---" * (len(cols) + 2) + "|"]
    for s in labels:
        cells = " | ".join(f"{result['drop_vs_honest_only_points'][s][a]:.1f}" for a in cols)
        lines.append(f"| {s} | {cells} | {result['worst_drop_vs_honest_only_points'][s]:.1f} |")
    honest = ", ".join(f"{v:.3f}" for v in result["honest_only_final"].values())
    lines.append(f"| honest only (mean; per seed) | {honest} |" + " |" * len(cols))
    return "\n".join(lines)


def plot(result: dict, labels: list[str], path: Path) -> str:
    cols = result["config"]["attacks"]
    plt = plots.pyplot()
    if plt is None:
        return plots.SKIPPED
    grid = np.array([[result["drop_vs_honest_only_points"][s][a] for a in cols] for s in labels])
    fig, ax = plt.subplots(figsize=(12, 0.5 * len(labels) + 2))
    im = ax.imshow(grid, cmap="RdYlGn_r", vmin=0, vmax=30, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(cols)):
            ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=8)
    cfg = result["config"]
    ax.set_title(
        f"worst drop vs honest-only (points, seeds {cfg['seeds']}), digits, {cfg['contributors']} "
        f"contributors ({len(cfg['attackers'])} attackers), {cfg['rounds']} rounds",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, fraction=0.03)
    return plots.save(fig, path)


if __name__ == "__main__":
    main()
