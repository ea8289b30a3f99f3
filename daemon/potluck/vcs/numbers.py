"""The numbers of `potluck diff` and `potluck blame` (pure: states and updates in, rows out).

diff A B, per tensor, over float64 copies of both versions: ``changed`` (entries whose value differs),
``l2`` = ||B - A||, ``relative`` = ||B - A|| / ||A|| (None when ||A|| = 0), and ``cosine_prev`` =
cos(B - A, A - parent(A)): whether this change continues the round that made A (None for the genesis,
a parent not held here, or a zero change). Per parameter group of the manifest (groups.py: a tensor is in
its first matching rule's group, named by the rule's pattern, or in "other"), the same sums: ``changed``,
``l2`` over the group and ``relative`` to the group's ||A||.

blame: round r moved the model by outer_lr * D_r, split into one term per merged update. For a
weighted-mean run, in round r the merge adds, before the one cast to each tensor's dtype,
``outer_lr * QUANTUM * q_u / W_r`` for each update u, where ``q_u = round(w_u * delta_u / QUANTUM)`` are
the integers the fixed point sums (rounds/fixedpoint.py) and ``W_r`` the commit's total weight. So an
author's movement m_a of a tensor over a range is the sum of those terms of its updates, and the
tensor's total movement M is the sum over authors. A row says ``l2`` = ||m_a||, ``entries`` (where
m_a is non-zero) and ``share`` = <m_a, M> / ||M||^2: the shares of a tensor add up to 1, and an author
whose moves were undone by others' ends near 0 (or negative). A revert merged in round r (vcs/revert.py)
added minus the reverted update's term, with that update's weight and round total: blame counts it
against the reverted update's author, so that author's movement over a range holding both is back to the
float casts of the rounds between (about an ulp an entry a round). Any other strategy: the terms of
merge/attribution.py (the strategy's exact decomposition, else the projection rule), times outer_lr
(:func:`attributed_steps`); what no update accounts for is counted apart (``unattributed``) and is part
of M, so the authors' shares then add up to 1 minus its share.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from potluck.groups import GroupRules
from potluck.merge import Strategy
from potluck.merge.attribution import attribute, projection
from potluck.rounds.fixedpoint import QUANTUM, Layout, contribution
from potluck.updates.codec import SignedUpdate

__all__ = [
    "OTHER_GROUP",
    "BlameRound",
    "attributed_steps",
    "blame",
    "diff",
    "group_of",
    "group_summary",
    "merged_step",
    "select",
]


def select(names: Iterable[str], pattern: str | None) -> list[str]:
    """The names that match the glob ``pattern`` (all when None), sorted."""
    return sorted(n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern))


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _cosine(x: np.ndarray, y: np.ndarray) -> float | None:
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    return float(np.dot(x, y)) / (nx * ny) if nx > 0 and ny > 0 else None


def diff(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    previous: Mapping[str, np.ndarray] | None = None,
    pattern: str | None = None,
) -> list[dict]:
    """One row per tensor of ``b`` matching ``pattern`` (see the module docstring); ``previous`` is
    A's parent. A tensor whose shape changed, or that only one side has, is a ValueError."""
    rows = []
    for name in select(set(a) | set(b), pattern):
        if name not in a or name not in b or a[name].shape != b[name].shape:
            raise ValueError(f"tensor {name!r} is not in both versions with one shape: not the same model")
        x, y = _f64(a[name]), _f64(b[name])
        change = y - x
        norm_a = float(np.linalg.norm(x))
        l2 = float(np.linalg.norm(change))
        prev = None
        if previous is not None and name in previous and previous[name].shape == a[name].shape:
            prev = _cosine(change, x - _f64(previous[name]))
        rows.append({
            "name": name, "shape": list(a[name].shape), "size": int(x.size),
            "changed": int(np.count_nonzero(a[name].reshape(-1) != b[name].reshape(-1))),
            "l2": l2, "relative": l2 / norm_a if norm_a > 0 else None, "cosine_prev": prev, "norm_a": norm_a,
        })  # fmt: skip
    return rows


OTHER_GROUP = "other"  # the tensors no group rule matches (the manifest's own fields apply)


def group_of(rules: GroupRules, name: str) -> str:
    """The parameter group of tensor ``name``: its first matching rule's pattern, or :data:`OTHER_GROUP`."""
    rule = rules.rule_for(name)
    return rule.pattern if rule is not None else OTHER_GROUP


def group_summary(rows: Sequence[dict], rules: GroupRules) -> list[dict]:
    """One row per parameter group that ``rows`` (of :func:`diff`) touch, in rule order, "other" last:
    its tensors, ``changed``/``size`` entries, ``l2`` = ||B - A|| over the group, ``relative`` to ||A||."""
    order = [r.pattern for r in rules.rules] + [OTHER_GROUP]
    acc: dict[str, dict] = {}
    for row in rows:
        g = acc.setdefault(
            group_of(rules, row["name"]), {"tensors": 0, "changed": 0, "size": 0, "sq": 0.0, "sq_a": 0.0}
        )
        g["tensors"] += 1
        g["changed"] += row["changed"]
        g["size"] += row["size"]
        g["sq"] += row["l2"] ** 2
        g["sq_a"] += row["norm_a"] ** 2
    out = []
    for name in sorted(acc, key=order.index):
        g = acc[name]
        l2, norm_a = float(np.sqrt(g["sq"])), float(np.sqrt(g["sq_a"]))
        out.append({"group": name, "tensors": g["tensors"], "changed": g["changed"], "size": g["size"],
                    "l2": l2, "relative": l2 / norm_a if norm_a > 0 else None})  # fmt: skip
    return out


@dataclass(frozen=True)
class BlameRound:
    """One committed round for blame: its total weight and [(author, weight, update)] it merged."""

    round: int
    total_weight: int
    merged: Sequence[tuple[str, int, SignedUpdate]]
    missing: Sequence[str] = field(default_factory=tuple)  # listed update ids not held here
    # the updates this round's reverts took out: (their author, weight, their round's total, update)
    reverted: Sequence[tuple[str, int, int, SignedUpdate]] = field(default_factory=tuple)
    # another strategy than the weighted mean: [(author, {tensor: float64 flat step})] from
    # :func:`attributed_steps` (author None: what no update accounts for); ``merged`` is then not used
    steps: Sequence[tuple[str | None, Mapping[str, np.ndarray]]] | None = None
    rule: str = "fixed_point"  # how the steps were attributed


def attributed_steps(
    strategy: Strategy,
    merged: Sequence[tuple[str, int, SignedUpdate]],
    seed: int,
    outer_lr: float,
    step: Mapping[str, np.ndarray] | None = None,
) -> tuple[list[tuple[str | None, dict[str, np.ndarray]]], str]:
    """Each update's ``outer_lr * t_u`` of a round merged by ``strategy`` (merge/attribution.py: its exact
    rule, or the projection rule), flat float64 per tensor, and the rule's name; the updates of weight 0
    are left out, as the merge left them out. ``step``: the round's merged delta as the versions show it
    (``(V_{r+1} - V_r) / outer_lr``), for a history-aware strategy, whose merge depends on earlier rounds:
    the updates are projected on it (what they do not account for, e.g. momentum, is unattributed)."""
    counted = [(a, w, u) for a, w, u in merged if w > 0]
    if not counted:
        return [], "none"
    deltas, weights = [u for _, _, u in counted], [float(w) for _, w, _ in counted]
    got = attribute(strategy, deltas, weights, seed) if step is None else projection(deltas, weights, step)
    steps: list[tuple[str | None, dict[str, np.ndarray]]] = [
        (a, {name: outer_lr * np.asarray(t, dtype=np.float64).reshape(-1) for name, t in terms.items()})
        for (a, _, _), terms in zip(counted, got.terms, strict=True)
    ]
    if got.unattributed:
        left = {
            name: outer_lr * np.asarray(t, dtype=np.float64).reshape(-1)
            for name, t in got.unattributed.items()
        }
        steps.append((None, left))
    return steps, got.rule


def merged_step(
    layout: Layout,
    weight: int,
    signed: SignedUpdate,
    total_weight: int,
    outer_lr: float,
    names: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """tensor -> ``outer_lr * QUANTUM * q_u / W`` (float64, flat): what update ``signed`` of merge weight
    ``weight`` added to each tensor it touched (of ``names``; all when None) in a round of total weight
    ``total_weight``, before the round's cast (the arithmetic of fixedpoint.next_version)."""
    touched = {t.name for t in signed.update.tensors if len(t.indices)}
    wanted = set(names) if names is not None else None
    q = contribution(layout, [(weight, signed)]).q
    out = {}
    for slot in layout.slots:
        if slot.name not in touched or (wanted is not None and slot.name not in wanted):
            continue
        step = q[slot.offset : slot.offset + slot.size].astype(np.float64)
        step *= QUANTUM
        step /= float(total_weight)
        step *= outer_lr
        out[slot.name] = step
    return out


def blame(layout: Layout, rounds: Iterable[BlameRound], outer_lr: float, pattern: str | None = None) -> dict:
    """Who moved which tensor over ``rounds`` (see the module docstring):
    ``{"tensors": [{name, l2, authors: [{author, l2, share, entries, updates}]}], "rounds": [...]}``."""
    names = select((s.name for s in layout.slots), pattern)
    slots = {s.name: s for s in layout.slots if s.name in names}
    moved: dict[str, dict[str, np.ndarray]] = {}  # author -> tensor -> movement
    counts: dict[tuple[str, str], int] = {}  # (author, tensor) -> updates that touched it
    seen, rules = [], set()
    for r in rounds:
        seen.append(r.round)
        rules.add(r.rule)
        if r.steps is not None:
            for author, steps in r.steps:
                mine = moved.setdefault(author, {})
                for name, step in steps.items():
                    if name not in slots or not np.any(step):
                        continue
                    mine[name] = mine[name] + step if name in mine else step.copy()
                    counts[author, name] = counts.get((author, name), 0) + 1
            continue
        terms = [(a, w, signed, r.total_weight, 1) for a, w, signed in r.merged]
        terms += [(a, w, signed, total, -1) for a, w, total, signed in r.reverted]
        for author, weight, signed, total_weight, sign in terms:
            if weight == 0 or total_weight == 0:
                continue
            mine = moved.setdefault(author, {})
            for name, step in merged_step(layout, weight, signed, total_weight, outer_lr, slots).items():
                step *= sign
                if name in mine:
                    mine[name] += step
                else:
                    mine[name] = step
                counts[author, name] = counts.get((author, name), 0) + (sign > 0)
    tensors = []
    for name in names:
        authors = {a: m[name] for a, m in moved.items() if name in m}
        total = sum(authors.values()) if authors else np.zeros(slots[name].size)
        total_sq = float(np.dot(total, total))
        left = authors.pop(None, None)  # what no update accounts for (the projection rule's remainder)
        rows = [
            {
                "author": a, "l2": float(np.linalg.norm(m)), "entries": int(np.count_nonzero(m)),
                "share": float(np.dot(m, total)) / total_sq if total_sq > 0 else None,
                "updates": counts[a, name],
            }
            for a, m in authors.items()
        ]  # fmt: skip
        rows.sort(key=lambda row: (-row["l2"], row["author"]))
        unattributed = None if left is None else {
            "l2": float(np.linalg.norm(left)),
            "share": float(np.dot(left, total)) / total_sq if total_sq > 0 else None,
        }  # fmt: skip
        tensors.append(
            {"name": name, "l2": float(np.sqrt(total_sq)), "authors": rows, "unattributed": unattributed}
        )
    return {"rounds": seen, "tensors": tensors, "attribution": sorted(rules)}
