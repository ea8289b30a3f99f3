"""``history_clip``: robust merging around the run's agreed history (issue 15).

A history-free robust rule judges each delta against the round alone, so an attacker who knows the
rule keeps its delta just inside the accepted range (an IPM delta of 1-2 median norms against the
honest mean) and is averaged like an honest contributor. This rule also looks at where the model has
been moving: the merged steps of the last rounds, which every node derives from the committed
versions (:class:`~potluck.merge.context.RoundContext`), so every node merges bit for bit alike.

Rule, for the n deltas of a round (canonical order) with weights ``w_i`` (sample counts) capped at
their lower median (a count claimed above the median buys no more than a median one; fewer than half
the weights cannot move the cap):

* **center** ``c``: the momentum of the agreed merged steps ``p_0`` (last round), ``p_1``, ...:
  ``c = sum_k beta^k p_k / sum_k beta^k`` over the (at most ``history_rounds``) steps given. Without
  history (round 0, or ``context`` None) ``c`` is the round's ``norm_filter`` merge;
* ``d_i = ||x_i - c||`` (L2 over the whole delta); ``med`` = the lower median of the d_i. A delta
  with ``d_i > reject * med`` is **dropped** (default ``reject = 4``: the x1000 attacks);
* **history gate** (``min_cos > -1``, off by default): a delta whose cosine with ``c`` is below
  ``min_cos`` is dropped. Off because on sparse non-IID updates the history has no direction to
  defend: with top-2% error-feedback updates, consecutive merged steps have cosines within -0.1..0.1
  after round 3 (bench/README.md), so honest deltas sit at cosine ~0 with ``c`` and a gate at 0
  drops half of them;
* **screen** (:func:`screen`): near-copies (pairwise cosine >= ``dup_cos``, default 0.9) become one
  row, their weighted mean with the mean of their weights (colluders sending one vector, a mimic and
  its model count once); then the row whose median cosine with the other rows is lowest is dropped
  while it is below ``min_agree`` (default -0.08), judged again after each drop, at most
  ``(k - 1) // 2`` rows. Without history (round 0) only copies at cosine >= 0.99
  (``ROUND0_DUP_COS``) count once: every delta then starts from the same genesis, and honest
  contributors sharing classes send deltas at cosine 0.90-0.96 (bench, 10 contributors). Honest non-IID deltas
  are nearly orthogonal (median cosine with the others -0.05..0 on the bench), while a delta pushing
  against the honest mean has cosine ``-c x 0.4`` with each (c: the share of the push in it), so the
  push an attacker can hide is bounded by the margin;
* **bucketing** (``bucket = s > 1``): the remaining rows are permuted by ranks of
  ``sha256(digest || index)`` (``digest`` = the round's :func:`~potluck.merge.context.entries_digest`;
  without one, the round seed) and averaged (weighted) in consecutive groups of s, each weighing the
  sum of its rows' weights (Karimireddy et al. 2022);
* **centered clipping** around ``c`` (Karimireddy, He & Jaggi 2021): ``v <- v + sum_i a_i
  clip_tau(y_i - v) / sum_i a_i`` from ``v = c`` over the k rows (buckets) with weights a_i,
  ``iterations`` times, with ``tau = clip * med``. A row within tau of v moves it exactly as the
  weighted mean would, so with no row clipped the result is the rows' weighted mean (up to rounding:
  an honest round merges as ``weighted_mean``); a row far from the history moves it by at most
  ``tau a_i / sum a`` per iteration.

After each merge ``last_factors`` holds one number per delta, in the order passed: 0 when dropped,
else its capped weight over its weight, divided by g for one of g near-copies, times its clip factor
(what a node reports as damping, rounds/merging.py).

Every sum over deltas is a row-by-row addition in a fixed order, every sum over coordinates numpy's
add.reduce of a contiguous float64 vector (:mod:`potluck.merge.batch`), the permutation comes from
sha256: the same round, history and digest give the same bytes on any node, whatever order the
deltas arrived in. It is a ``vector`` strategy (its distances span every coordinate), merged where the
round's updates are gathered.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from potluck.merge.base import Args, BaseStrategy, StrategyError, _seed
from potluck.merge.batch import Batch, Delta, rowsum, sqnorm
from potluck.merge.context import RoundContext
from potluck.merge.linear import fixed_point_mean
from potluck.merge.norm_filter import NormFilter

__all__ = ["ROUND0_DUP_COS", "HistoryClip", "bucket_order", "momentum_center"]

ROUND0_DUP_COS = 0.99  # near-copies in round 0, where honest deltas from one genesis are alike


def momentum_center(batch: Batch, previous: Sequence[Mapping[str, np.ndarray]], beta: float) -> np.ndarray:
    """``sum_k beta^k p_k / sum_k beta^k`` flattened in ``batch``'s layout (a tensor a step lacks is 0)."""
    weights = [beta**k for k in range(len(previous))]
    total = math.fsum(weights)
    acc = np.zeros(batch.length, dtype=np.float64)
    for w, step in zip(weights, previous, strict=True):
        if not isinstance(step, Mapping):
            raise StrategyError(f"history_clip: a previous step is a mapping, got {type(step).__name__}")
        for slot in batch.slots:
            if slot.name not in step:
                continue
            value = np.asarray(step[slot.name], dtype=np.float64)
            if value.shape != slot.shape:
                raise StrategyError(
                    f"history_clip: previous step's {slot.name!r} has shape {value.shape}, not {slot.shape}"
                )
            if not np.isfinite(value).all():
                raise StrategyError(f"history_clip: previous step's {slot.name!r} is not finite")
            acc[slot.offset : slot.offset + slot.size] += (w / total) * value.reshape(-1)
    return acc


def bucket_order(n: int, key: bytes) -> list[int]:
    """A permutation of ``range(n)`` every node derives alike: indices sorted by sha256(key || index)."""
    return sorted(range(n), key=lambda i: hashlib.sha256(key + i.to_bytes(4, "big")).digest())


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.add.reduce(np.ascontiguousarray(a * b)))


def cosines(rows: np.ndarray) -> list[list[float]]:
    """Pairwise cosines of the rows (0 with a zero row; 1 on the diagonal), each pair computed once."""
    k = rows.shape[0]
    norms = [math.sqrt(sqnorm(rows[i])) for i in range(k)]
    cos = [[1.0] * k for _ in range(k)]
    for i in range(k):
        for j in range(i + 1, k):
            d = norms[i] * norms[j]
            cos[i][j] = cos[j][i] = _dot(rows[i], rows[j]) / d if d > 0.0 else 0.0
    return cos


def screen(
    rows: np.ndarray, dup_cos: float, min_agree: float, weights: Sequence[float] | None = None
) -> tuple[np.ndarray, list[list[int]]]:
    """Collapse near-copies, then drop rows that disagree with the others (see the module doc); the
    rows left and, for each, the input rows it is the mean of.

    Rows with cosine >= ``dup_cos`` (transitively) become their mean (weighted by ``weights``, default
    all 1), counted once (``dup_cos`` 1: only exact directions); then a row whose median cosine with
    the other rows is below ``min_agree`` is dropped, one at a time (the lowest; then the others are
    judged again without it) and never more than ``(k - 1) // 2`` of the k rows.
    """
    cos = cosines(rows)
    k = rows.shape[0]
    group = list(range(k))  # union-find over near-copies, the smallest index as the root
    for i in range(k):
        for j in range(i + 1, k):
            if cos[i][j] >= dup_cos:
                a, b = _root(group, i), _root(group, j)
                group[max(a, b)] = min(a, b)
    roots = sorted({_root(group, i) for i in range(k)})
    members = [[i for i in range(k) if _root(group, i) == r] for r in roots]
    if len(roots) < k:
        w = [1.0] * k if weights is None else [float(x) for x in weights]
        rows = np.stack([_wmean(rows[m], [w[i] for i in m]) for m in members])
        cos = cosines(rows)
        k = rows.shape[0]
    keep = list(range(k))
    while len(keep) >= 3 and k - len(keep) < (k - 1) // 2 and min_agree > -1.0:
        agree = [sorted(cos[i][j] for j in keep if j != i)[(len(keep) - 2) // 2] for i in keep]
        worst = min(range(len(keep)), key=lambda t: (agree[t], t))
        if agree[worst] >= min_agree:
            break
        del keep[worst]  # the most disagreeing row; the others' agreement is judged again without it
    return rows[keep], [members[i] for i in keep]


def _wmean(rows: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """``sum_i w_i rows[i] / sum_i w_i``, rows added in order."""
    return rowsum(rows * np.array(weights, dtype=np.float64)[:, None]) / math.fsum(weights)


def _root(group: list[int], i: int) -> int:
    while group[i] != i:
        i = group[i]
    return i


class HistoryClip(BaseStrategy):
    """Centered clipping around the momentum of the agreed merged steps, after a norm cut, an optional
    history gate, a copy-and-disagreement screen and optional seeded bucketing (see
    :mod:`potluck.merge.history`).

    Args: ``beta`` (momentum of the previous steps, in [0, 1), default 0.5), ``clip`` (tau as a
    multiple of the median distance to the center, > 0, default 2), ``reject`` (0 = never, or >= 1;
    default 4), ``min_cos`` (in [-1, 1], default -1 = no history gate), ``dup_cos`` (in [0, 1],
    default 0.9), ``min_agree`` (in [-1, 1], default -0.08; -1 = no disagreement screen), ``bucket``
    (rows per bucket, default 1 = none), ``iterations`` (default 1).
    """

    name = "history_clip"
    kind = "vector"
    history_rounds: ClassVar[int] = 4

    def configure(self, a: Args) -> None:
        self.beta = a.number("beta", 0.5, low=0.0, high=1.0, high_open=True)
        self.clip = a.number("clip", 2.0, low=0.0, low_open=True)
        self.reject = a.number("reject", 4.0, low=0.0)
        self.min_cos = a.number("min_cos", -1.0, low=-1.0, high=1.0)
        self.dup_cos = a.number("dup_cos", 0.9, low=0.0, high=1.0)
        self.min_agree = a.number("min_agree", -0.08, low=-1.0, high=1.0)
        self.bucket = a.integer("bucket", 1, low=1, high=1 << 16)
        self.iterations = a.integer("iterations", 1, low=1, high=1000)
        # after each merge: one factor in [0, 1] per delta as passed (rounds/merging.py ``damping``)
        self.last_factors: tuple[float, ...] = ()
        if 0.0 < self.reject < 1.0:
            raise StrategyError(
                f"{self.name}: argument 'reject' must be 0 (never) or >= 1, got {self.reject!r}"
            )

    def merge(
        self,
        deltas: Sequence[Delta],
        weights: Sequence[float],
        *,
        round_seed: int,
        context: RoundContext | None = None,
    ) -> dict[str, np.ndarray]:
        seed = _seed(round_seed)
        if context is not None and not isinstance(context, RoundContext):
            raise StrategyError(f"{self.name}: context must be a RoundContext, got {type(context).__name__}")
        if context is not None and context.authors and len(context.authors) != len(deltas):
            raise StrategyError(
                f"{self.name}: context names {len(context.authors)} authors for {len(deltas)} deltas"
            )
        batch = self.batch_of(deltas, weights)
        self.last_factors = ()
        if batch.n == 0:
            return batch.split(np.zeros(batch.length, dtype=np.float64))
        previous = tuple(context.previous[: self.history_rounds]) if context is not None else ()
        key = context.digest if context is not None and context.digest else seed.to_bytes(8, "big")
        merged, factors = self.merge_history(batch, previous, key)
        # canonical rows back to the order the deltas were passed in, by their values in the layout
        by_row = {batch.matrix[i].tobytes(): factors[i] for i in range(batch.n)}
        shapes = {slot.name: slot.shape for slot in batch.slots}
        self.last_factors = tuple(
            by_row.get(self.batch_of([d], [1.0], shapes).matrix[0].tobytes(), 0.0) if w > 0 else 0.0
            for d, w in zip(deltas, weights, strict=True)
        )
        return batch.split(merged)

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        return self.merge_history(batch, (), seed.to_bytes(8, "big"))[0]

    def merge_history(
        self, batch: Batch, previous: Sequence[Mapping[str, np.ndarray]], key: bytes
    ) -> tuple[np.ndarray, list[float]]:
        """The merged flat delta and each row's factor (canonical order): 0 dropped, else the capped
        weight over the weight, ``/ g`` for one of ``g`` near-copies, times its clip factor (the last
        iteration's)."""
        x = batch.matrix
        if previous:
            center = momentum_center(batch, previous, self.beta)
        else:
            center = NormFilter({}).merge_batch(batch, 0)
        dist = [math.sqrt(sqnorm(x[i] - center)) for i in range(batch.n)]
        med = sorted(dist)[(batch.n - 1) // 2]
        kept = [i for i in range(batch.n) if not (self.reject and dist[i] > self.reject * med)]
        cnorm = math.sqrt(sqnorm(center))
        if previous and cnorm > 0.0 and self.min_cos > -1.0:
            gated = []
            for i in kept:
                xn = math.sqrt(sqnorm(x[i]))
                if xn > 0.0 and _dot(x[i], center) >= self.min_cos * xn * cnorm:
                    gated.append(i)
            kept = gated
        # weights capped at their lower median: a claimed sample count buys at most a median one
        wmed = sorted(batch.weights.tolist())[(batch.n - 1) // 2]
        w = [min(float(batch.weights[i]), wmed) for i in range(batch.n)]
        factors = [0.0] * batch.n  # what each row (canonical order) weighs against its weight in a mean
        if not kept:  # every delta gated out: stay on the history
            return center, factors
        # round 0: deltas from one genesis are alike (honest pairs up to cosine 0.96): exact copies only
        dup = self.dup_cos if previous else max(self.dup_cos, ROUND0_DUP_COS)
        rows, groups = screen(x[kept], dup, self.min_agree, [w[i] for i in kept])
        groups = [[kept[i] for i in g] for g in groups]
        rw = [math.fsum(w[i] for i in g) / len(g) for g in groups]  # a group of copies weighs as one
        for g in groups:
            for i in g:
                factors[i] = w[i] / float(batch.weights[i]) / (len(g) if self.bucket == 1 else 1)
        single = [g[0] for g in groups] if all(len(g) == 1 for g in groups) else []  # no copies
        if self.bucket > 1 and rows.shape[0] > 1:
            single = []
            order = bucket_order(rows.shape[0], key)
            buckets = [order[j : j + self.bucket] for j in range(0, len(order), self.bucket)]
            rows = np.stack([_wmean(rows[b], [rw[t] for t in b]) for b in buckets])
            groups = [[i for t in b for i in groups[t]] for b in buckets]
            rw = [math.fsum(rw[t] for t in b) for b in buckets]
        tau = self.clip * med
        total = math.fsum(rw)
        v = center
        for _ in range(self.iterations):
            diffs = rows - v
            scale = []
            for i in range(rows.shape[0]):
                d = math.sqrt(sqnorm(diffs[i]))
                scale.append(1.0 if d <= tau else tau / d)
            if single and self.iterations == 1 and min(scale) == 1.0:
                # nothing clipped, collapsed or bucketed: the rows' weighted mean, computed as
                # weighted_mean computes it (the same bytes as that strategy on an honest round)
                sub = Batch(slots=batch.slots, matrix=np.ascontiguousarray(x[single]),
                            weights=np.array([w[i] for i in single]), int_weights=None)  # fmt: skip
                return fixed_point_mean(sub, tuple(w[i] for i in single)), factors
            diffs *= np.array([s * a for s, a in zip(scale, rw, strict=True)], dtype=np.float64)[:, None]
            step = rowsum(diffs)
            step /= total
            v = v + step
        for g, f in zip(groups, scale, strict=True):  # the last iteration's clipping
            for i in g:
                factors[i] *= f
        return v, factors
