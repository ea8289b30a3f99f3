"""Linear and model-merging strategies: mean, weighted_mean, task_arithmetic, ties, dare.

All are ``kind = "coordinate"``: the value of a coordinate of the result depends only on that
coordinate of the deltas (TIES and DARE after a per-update step that needs only that one update:
the trim to its top-k%, the seeded drop mask). All are ``windowed``: ``merge_columns`` gives the
bits of the full merge at any window of coordinates (after the per-update step, every operation is
elementwise per column; the per-update step itself is computed as on the whole update).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from potluck.merge.base import Args, BaseStrategy
from potluck.merge.batch import Batch, rowsum

__all__ = [
    "BOUND",
    "QUANTUM",
    "Dare",
    "Mean",
    "TaskArithmetic",
    "Ties",
    "WeightedMean",
    "fixed_point_mean",
    "keep_mask",
    "next_state",
]

# The fixed-point grid of exact weighted sums: this merge sums on it, and potluck.rounds.fixedpoint
# carries the same integers through hivemind's all-reduce (its docstring says why they are exact).
QUANTUM = 2.0**-24
BOUND = 1 << 40  # |q| per coordinate of one participant's contribution
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
    windowed = True

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        weights = batch.int_weights or tuple(float(w) for w in batch.weights)
        return fixed_point_mean(batch, weights)

    def attribute_batch(self, batch: Batch, seed: int) -> np.ndarray:
        return batch.matrix * (batch.weights / math.fsum(batch.weights.tolist()))[:, None]


class Mean(BaseStrategy):
    """The unweighted mean ``sum(delta_u) / n`` (the weighted mean with every weight 1). No arguments."""

    name = "mean"
    kind = "coordinate"
    windowed = True

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        return fixed_point_mean(batch, (1,) * batch.n)

    def attribute_batch(self, batch: Batch, seed: int) -> np.ndarray:
        return batch.matrix / batch.n


class TaskArithmetic(BaseStrategy):
    """Task arithmetic (Ilharco et al. 2023): ``lambda * sum(delta_u)``, weights ignored.

    Args: ``lambda`` (> 0, default 1.0).
    """

    name = "task_arithmetic"
    kind = "coordinate"
    windowed = True

    def configure(self, a: Args) -> None:
        self.scale = a.number("lambda", 1.0, low=0.0, low_open=True)

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        out = rowsum(batch.matrix)
        out *= self.scale
        return out

    def attribute_batch(self, batch: Batch, seed: int) -> np.ndarray:
        return batch.matrix * self.scale


def _top(values: np.ndarray, percent: float) -> np.ndarray:
    """Positions in ``values`` (an update's non-zero entries in flat order) of its top ``percent``%.

    Keeps ``ceil(percent / 100 * nnz)`` entries by magnitude; equal magnitudes at the cut are broken by
    the lower index (stable sort), so the result is deterministic.
    """
    keep = min(values.size, math.ceil(percent * values.size / 100 - 1e-9))
    return np.argsort(-np.abs(values), kind="stable")[:keep]


class Ties(BaseStrategy):
    """TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean; weights ignored.

    1. Trim: each delta keeps its top ``k``% non-zero entries by magnitude (over all its tensors).
       On a dense delta that is the paper's top-k% of parameters; on potluck's top-1% sparse updates
       ``k`` is relative to what the update sent.
    2. Elect: per coordinate, the sign of the sum of the trimmed values (the sign with the larger
       total magnitude).
    3. Disjoint mean: the mean of the trimmed values whose sign agrees with the elected one (0 where
       none does), times ``lambda``.

    Where contributors pull apart (fine-tunes on different domains), the election drops the minority's
    move at each coordinate it loses: on the lm task's three domains TIES kept >= 90% of every domain's
    own gain in 1 of 44 runs (k, lambda, one-shot or every round), where the mean merged every round
    keeps it all (bench/README.md, lm: "TIES, tried further").

    Args: ``k`` (percent in (0, 100], default 20), ``lambda`` (> 0, default 1.0).

    On a window (``merge_columns``) the trim is still decided on each whole update, from its sparse
    form (``Batch.nonzeros``: O(nnz log nnz) per update, never densified), then restricted to the
    window's columns.
    """

    name = "ties"
    kind = "coordinate"
    windowed = True

    def configure(self, a: Args) -> None:
        self.k = a.number("k", 20.0, low=0.0, high=100.0, low_open=True)
        self.scale = a.number("lambda", 1.0, low=0.0, low_open=True)

    def _agreeing(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Each row's trimmed values that agree with the elected sign (0 elsewhere); per column, how many."""
        trimmed = np.zeros_like(batch.matrix)
        for i in range(batch.n):
            pos, values = batch.nonzeros(i)  # the whole update, in flat order
            at = batch.locate(pos[_top(values, self.k)])  # its survivors' columns in this batch's matrix
            trimmed[i, at] = batch.matrix[i, at]
        elected = np.sign(rowsum(trimmed))
        agree = (np.sign(trimmed) == elected) & (trimmed != 0)
        return np.where(agree, trimmed, 0.0), agree.sum(axis=0)

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        agreeing, count = self._agreeing(batch)
        total = rowsum(agreeing)
        out = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        out *= self.scale
        return out

    def attribute_batch(self, batch: Batch, seed: int) -> np.ndarray:
        agreeing, count = self._agreeing(batch)  # the disjoint mean: each agreeing value over the count
        return agreeing / np.maximum(count, 1) * self.scale


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def keep_mask(
    seed: int, index: int, name: str, size: int, p: float, start: int = 0, stop: int | None = None
) -> np.ndarray:
    """DARE's keep mask of one tensor of update ``index``: each coordinate kept with probability 1-p.

    The stream is Philox seeded by ``SeedSequence([seed, index, sha256(name)[:8]])``, read as raw
    uint64 words (numpy guarantees bit generator streams across versions and machines); coordinate j
    is dropped when its word is below ``p * 2**64``. One tensor's mask depends on nothing else, so a
    reducer can compute it for its slice: ``start``/``stop`` give ``mask[start:stop]`` of the tensor's
    mask at a cost of O(stop - start), by advancing Philox's counter (4 words per step) to ``start``.
    """
    stop = size if stop is None else stop
    if not 0 <= start <= stop <= size:
        raise ValueError(f"keep_mask: [{start}, {stop}) is not within a tensor of {size}")
    bits = np.random.Philox(np.random.SeedSequence([seed, index, _name_key(name)]))
    blocks, skip = divmod(start, 4)
    if blocks:
        bits.advance(blocks)
    raw = bits.random_raw(stop - start + skip)[skip:]
    threshold = min(int(p * 2.0**64), (1 << 64) - 1)
    return raw >= np.uint64(threshold)


class Dare(BaseStrategy):
    """DARE (Yu et al. 2024): drop each entry of each delta with probability ``p``, rescale the
    survivors by ``1 / (1 - p)`` (so every delta is unchanged in expectation), then the weighted mean
    ``sum(w_u d_u) / sum(w_u)`` (float64, canonical order) times ``lambda``.

    The randomness is seeded by ``round_seed`` and the update's index in the canonical order (see
    potluck.merge.batch) and the tensor name (:func:`keep_mask`): every node draws the same masks.
    Args: ``p`` (drop rate in [0, 1), default 0.5), ``lambda`` (> 0, default 1.0).

    Cost of a window (``merge_columns``): for each update and each tensor the window overlaps where
    that update has a non-zero (or -0.0) value, the tensor's mask from the window's first to its last
    column in that tensor (O(that span), not the whole tensor: :func:`keep_mask` skips ahead in the
    Philox stream). A contiguous window therefore costs O(n * len(columns)) words; a scattered one up
    to O(n * size of the tensors it touches). A row with only +0.0 in a tensor needs no mask (the
    result there is +0.0 whatever the mask), in the full merge too.
    """

    name = "dare"
    kind = "coordinate"
    windowed = True

    def configure(self, a: Args) -> None:
        self.p = a.number("p", 0.5, low=0.0, high=1.0, high_open=True)
        self.scale = a.number("lambda", 1.0, low=0.0, low_open=True)

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        out = rowsum(self._parts(batch, seed))
        out /= math.fsum(batch.weights.tolist())
        out *= self.scale
        return out

    def attribute_batch(self, batch: Batch, seed: int) -> np.ndarray:
        return self._parts(batch, seed) / math.fsum(batch.weights.tolist()) * self.scale

    def _parts(self, batch: Batch, seed: int) -> np.ndarray:
        """Row i: ``w_i * keep_i * delta_i / (1 - p)``, delta i's surviving entries rescaled and weighted."""
        rescale = 1.0 / (1.0 - self.p)
        parts = np.zeros_like(batch.matrix)
        segments = batch.segments()
        for i in range(batch.n):
            for g in segments:
                v = batch.matrix[i, g.lo : g.hi]
                if not v.view(np.uint64).any():  # all +0.0: +0.0 whatever the mask
                    continue
                s = g.slot
                if g.local is None:
                    keep = keep_mask(seed, i, s.name, s.size, self.p)
                else:
                    first, last = int(g.local[0]), int(g.local[-1]) + 1
                    keep = keep_mask(seed, i, s.name, s.size, self.p, first, last)[g.local - first]
                d = np.where(keep, v, 0.0)
                d *= rescale
                d *= batch.weights[i]
                parts[i, g.lo : g.hi] = d
        return parts


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
