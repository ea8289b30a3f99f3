"""Linear and model-merging strategies: mean, weighted_mean, task_arithmetic, ties, dare.

All are ``kind = "coordinate"``: the value of a coordinate of the result depends only on that
coordinate of the deltas (TIES and DARE after a per-update step that needs only that one update:
the trim to its top-k%, the seeded drop mask).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from potluck.merge.base import Args, BaseStrategy
from potluck.merge.batch import Batch, rowsum
from potluck.rounds.fixedpoint import BOUND, QUANTUM

__all__ = [
    "Dare",
    "Mean",
    "TaskArithmetic",
    "Ties",
    "WeightedMean",
    "fixed_point_mean",
    "keep_mask",
    "next_state",
]

_INV_QUANTUM = 1.0 / QUANTUM


def fixed_point_mean(batch: Batch, weights: tuple[float, ...]) -> np.ndarray:
    """``sum(w_u delta_u) / sum(w_u)`` in potluck's fixed point (potluck.rounds.fixedpoint).

    Each ``w_u * delta_u`` is rounded to a multiple of ``QUANTUM = 2**-24`` and clipped to
    +-2**40 quanta, the int64 sum (exact, so independent of order) clipped again, and the result is
    ``(S * QUANTUM) / W`` in float64. ``next_state(base, result, outer_lr)`` is then bit-identical to
    ``fixedpoint.local_average`` (and the all-reduce path) for integer weights.
    """
    total = 0
    s = np.zeros(batch.length, dtype=np.int64)
    bound = float(BOUND)
    for i, w in enumerate(weights):
        x = batch.matrix[i] * float(w)
        x *= _INV_QUANTUM
        np.rint(x, out=x)
        np.clip(x, -bound, bound, out=x)
        s += x.astype(np.int64)
    np.clip(s, -BOUND, BOUND, out=s)
    total = sum(weights) if all(isinstance(w, int) for w in weights) else math.fsum(weights)
    out = s.astype(np.float64)
    out *= QUANTUM
    out /= float(total)
    return out


class WeightedMean(BaseStrategy):
    """``sum(w_u delta_u) / sum(w_u)``: potluck's default merge, exactly as the all-reduce computes it.

    No arguments. See :func:`fixed_point_mean` (values below 2**-25 / w are rounded away, like the
    daemon's default path).
    """

    name = "weighted_mean"
    kind = "coordinate"

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        weights = batch.int_weights or tuple(float(w) for w in batch.weights)
        return fixed_point_mean(batch, weights)


class Mean(BaseStrategy):
    """The unweighted mean ``sum(delta_u) / n`` (the weighted mean with every weight 1). No arguments."""

    name = "mean"
    kind = "coordinate"

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        return fixed_point_mean(batch, (1,) * batch.n)


class TaskArithmetic(BaseStrategy):
    """Task arithmetic (Ilharco et al. 2023): ``lambda * sum(delta_u)``, weights ignored.

    Args: ``lambda`` (> 0, default 1.0).
    """

    name = "task_arithmetic"
    kind = "coordinate"

    def configure(self, a: Args) -> None:
        self.scale = a.number("lambda", 1.0, low=0.0, low_open=True)

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        out = rowsum(batch.matrix)
        out *= self.scale
        return out


def _trim(v: np.ndarray, percent: float) -> np.ndarray:
    """``v`` with all but its top ``percent``% non-zero entries by magnitude set to 0.

    Keeps ``ceil(percent / 100 * nnz)`` entries; equal magnitudes at the cut are broken by the lower
    index (stable sort), so the result is deterministic.
    """
    nz = np.flatnonzero(v)
    keep = min(nz.size, math.ceil(percent * nz.size / 100 - 1e-9))
    out = np.zeros_like(v)
    if keep:
        top = nz[np.argsort(-np.abs(v[nz]), kind="stable")[:keep]]
        out[top] = v[top]
    return out


class Ties(BaseStrategy):
    """TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean; weights ignored.

    1. Trim: each delta keeps its top ``k``% non-zero entries by magnitude (over all its tensors).
       On a dense delta that is the paper's top-k% of parameters; on potluck's top-1% sparse updates
       ``k`` is relative to what the update sent.
    2. Elect: per coordinate, the sign of the sum of the trimmed values (the sign with the larger
       total magnitude).
    3. Disjoint mean: the mean of the trimmed values whose sign agrees with the elected one (0 where
       none does), times ``lambda``.

    Args: ``k`` (percent in (0, 100], default 20), ``lambda`` (> 0, default 1.0).
    """

    name = "ties"
    kind = "coordinate"

    def configure(self, a: Args) -> None:
        self.k = a.number("k", 20.0, low=0.0, high=100.0, low_open=True)
        self.scale = a.number("lambda", 1.0, low=0.0, low_open=True)

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        trimmed = np.stack([_trim(batch.matrix[i], self.k) for i in range(batch.n)])
        elected = np.sign(rowsum(trimmed))
        agree = (np.sign(trimmed) == elected) & (trimmed != 0)
        total = rowsum(np.where(agree, trimmed, 0.0))
        count = agree.sum(axis=0)
        out = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        out *= self.scale
        return out


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def keep_mask(seed: int, index: int, name: str, size: int, p: float) -> np.ndarray:
    """DARE's keep mask of one tensor of update ``index``: each coordinate kept with probability 1-p.

    The stream is Philox seeded by ``SeedSequence([seed, index, sha256(name)[:8]])``, read as raw
    uint64 words (numpy guarantees bit generator streams across versions and machines); coordinate j
    is dropped when its word is below ``p * 2**64``. One tensor's mask depends on nothing else, so a
    reducer can compute it for its slice.
    """
    bits = np.random.Philox(np.random.SeedSequence([seed, index, _name_key(name)]))
    raw = bits.random_raw(size)
    threshold = min(int(p * 2.0**64), (1 << 64) - 1)
    return raw >= np.uint64(threshold)


class Dare(BaseStrategy):
    """DARE (Yu et al. 2024): drop each entry of each delta with probability ``p``, rescale the
    survivors by ``1 / (1 - p)`` (so every delta is unchanged in expectation), then the weighted mean
    ``sum(w_u d_u) / sum(w_u)`` (float64, canonical order) times ``lambda``.

    The randomness is seeded by ``round_seed`` and the update's index in the canonical order (see
    potluck.merge.batch) and the tensor name (:func:`keep_mask`): every node draws the same masks.
    Args: ``p`` (drop rate in [0, 1), default 0.5), ``lambda`` (> 0, default 1.0).
    """

    name = "dare"
    kind = "coordinate"

    def configure(self, a: Args) -> None:
        self.p = a.number("p", 0.5, low=0.0, high=1.0, high_open=True)
        self.scale = a.number("lambda", 1.0, low=0.0, low_open=True)

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        rescale = 1.0 / (1.0 - self.p)
        parts = np.empty_like(batch.matrix)
        for i in range(batch.n):
            for s in batch.slots:
                v = batch.matrix[i, s.offset : s.offset + s.size]
                keep = keep_mask(seed, i, s.name, s.size, self.p)
                d = np.where(keep, v, 0.0)
                d *= rescale
                d *= batch.weights[i]
                parts[i, s.offset : s.offset + s.size] = d
        out = rowsum(parts)
        out /= math.fsum(batch.weights.tolist())
        out *= self.scale
        return out


def next_state(base_state, merged, outer_lr: float = 1.0) -> dict[str, np.ndarray]:
    """``V + outer_lr * merged`` per tensor: float64 ``merged * outer_lr + base``, cast once to the base
    tensor's dtype (the arithmetic of fixedpoint.next_version, so with :class:`WeightedMean` the bytes
    equal ``local_average``'s). Tensors ``merged`` does not name are the same objects as in the base.
    """
    if not isinstance(outer_lr, int | float) or not math.isfinite(outer_lr) or outer_lr <= 0:
        raise ValueError(f"outer_lr must be a positive finite number, got {outer_lr!r}")
    out = dict(base_state)
    for name, step in merged.items():
        if name not in base_state:
            raise ValueError(f"the merged delta names {name!r}, which the state does not hold")
        base = np.asarray(base_state[name])
        if tuple(base.shape) != tuple(np.shape(step)):
            raise ValueError(f"{name}: merged shape {np.shape(step)} != state shape {base.shape}")
        s = np.array(step, dtype=np.float64)
        s *= float(outer_lr)
        s += base.astype(np.float64)
        with np.errstate(over="ignore"):
            out[name] = s.astype(base.dtype)
    return out
