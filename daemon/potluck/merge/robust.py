"""Byzantine-robust strategies: trimmed_mean, coordinate_median (coordinate-wise) and centered_clip,
multi_krum, geometric_median (vector). They ignore the weights (a peer must not buy influence by
claiming more samples): every delta counts once.

**Sparse-aware** coordinate-wise aggregation (``sparse = true``, the default). On top-1% sparse
updates most coordinates are 0 in most deltas, and a plain coordinate median or trimmed mean over all
n deltas is 0 wherever fewer than half the deltas touch a coordinate, although the honest mean there
is not 0 (bench/robust.py: on non-IID digits the dense median does not learn at all). The
sparse-aware rule aggregates each coordinate over the deltas that touch it and estimates the mean as
(fraction of deltas touching it) x (robust location of their values):

* let ``t_j`` be the number of deltas with a non-zero value at coordinate j and
  ``m_j = max(t_j, min_support)`` (``min_support`` default 1); the multiset is those ``t_j`` values
  plus ``m_j - t_j`` zeros;
* the result is ``location(multiset) * m_j / n``: the median, or the mean after dropping the
  ``floor(beta * m_j)`` largest and smallest values. A coordinate touched by no one stays 0.

With no outlier this is the plain mean wherever the location of the touching values is their mean
(one or two touching deltas, or a trimmed mean that trims nothing). **Trade-off:** a coordinate that
only attackers touch is theirs (with the default ``min_support = 1``, two x1000 sign-flippers move
their own coordinates at will). ``min_support = 2f + 1`` pads such coordinates with zeros and keeps
them robust to f attackers per coordinate, but on sparse non-IID updates almost no coordinate is
touched by that many deltas, and the aggregate degrades to the dense rule's zeros. ``sparse = false``
is the classical rule over all n deltas (the same as ``min_support = n``). For a robust default on
sparse updates use ``norm_filter`` (:mod:`potluck.merge.norm_filter`: drops deltas far above the
median norm, clips and averages the rest); ``centered_clip`` (a vector rule whose start is the
sparse-aware median and whose clipping bounds every delta's influence; its start pads to a majority)
and ``geometric_median`` bound large attacks too but, on non-IID sparse updates, let a clipped
attacker cancel much of the honest mean (bench/README.md).
"""

from __future__ import annotations

import math

import numpy as np

from potluck.merge.base import Args, BaseStrategy
from potluck.merge.batch import Batch, rowsum, sqnorm

__all__ = [
    "CenteredClip",
    "CoordinateMedian",
    "GeometricMedian",
    "MultiKrum",
    "TrimmedMean",
    "median_of",
    "median_terms",
]

_CHUNK = 1 << 15  # columns per pass of the coordinate-wise strategies (bounds the temporaries)


def _multiset(chunk: np.ndarray, min_support: int) -> tuple[np.ndarray, np.ndarray]:
    """The chunk with the entries outside each column's multiset as NaN; and its size m per column."""
    n = chunk.shape[0]
    touched = chunk != 0
    t = touched.sum(axis=0)
    pad = np.maximum(min_support - t, 0)
    rank = np.cumsum(~touched, axis=0)  # 1-based rank of an untouched entry in its column
    values = np.where(touched | (rank <= pad), chunk, np.nan)
    return values, t + np.minimum(pad, n - t)


def _support(chunk: np.ndarray, min_support: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns sorted ascending with the entries outside each column's multiset as NaN (last); and m."""
    values, m = _multiset(chunk, min_support)
    return np.sort(values, axis=0), m


def _order_terms(batch: Batch, min_support: int, weights_of) -> np.ndarray:
    """Per row, its term of an order-statistic rule: ``weights_of(m)`` gives, per sorted position k and
    column, the weight of the k-th smallest value of the column's multiset in the location; the row
    that holds that value (equal values: the lower canonical row) gets ``weight * value * m / n``."""
    n = batch.n
    out = np.zeros_like(batch.matrix)
    for start in range(0, batch.length, _CHUNK):
        chunk = batch.matrix[:, start : start + _CHUNK]
        values, m = _multiset(chunk, min_support)
        rows = np.argsort(values, axis=0, kind="stable")  # NaN last, as np.sort puts them
        cols = np.broadcast_to(np.arange(chunk.shape[1]), rows.shape)
        w = weights_of(m) * (m / n)
        out[rows, cols + start] = chunk[rows, cols] * w
    return out


def median_terms(batch: Batch, sparse: bool, min_support: int | None) -> np.ndarray:
    """Row i: its term of :func:`median_of` (the rows add up to it): the one or two middle values of
    each column's multiset, each times ``m / n`` (halved when there are two), to the rows that hold them."""
    support = batch.n if not sparse else min(batch.n, min_support or 1)
    k = np.arange(batch.n)[:, None]
    return _order_terms(batch, support, lambda m: 0.5 * (k == (m - 1) // 2) + 0.5 * (k == m // 2))


def _columns(batch: Batch, fn) -> np.ndarray:
    out = np.empty(batch.length, dtype=np.float64)
    for start in range(0, batch.length, _CHUNK):
        out[start : start + _CHUNK] = fn(batch.matrix[:, start : start + _CHUNK])
    return out


def _median_chunk(chunk: np.ndarray, min_support: int) -> np.ndarray:
    n = chunk.shape[0]
    s, m = _support(chunk, min_support)
    lo = np.take_along_axis(s, ((m - 1) // 2)[None, :], axis=0)[0]
    hi = np.take_along_axis(s, (m // 2)[None, :], axis=0)[0]
    med = (lo + hi) / 2.0
    return med * (m / n)


def median_of(batch: Batch, sparse: bool, min_support: int | None) -> np.ndarray:
    """The (sparse-aware) coordinate median of ``batch`` (see the module doc)."""
    n = batch.n
    support = n if not sparse else min(n, min_support or 1)
    return _columns(batch, lambda c: _median_chunk(c, support))


class CoordinateMedian(BaseStrategy):
    """Per coordinate, the median (mean of the two middle values for an even count).

    Args: ``sparse`` (default true: sparse-aware, see the module doc), ``min_support`` (int >= 1,
    default 1; ignored when ``sparse`` is false).
    """

    name = "coordinate_median"
    kind = "coordinate"
    windowed = True

    def configure(self, a: Args) -> None:
        self.sparse = a.boolean("sparse", True)
        self.min_support = a.integer("min_support", None, low=1)

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        return median_of(batch, self.sparse, self.min_support)

    def attribute_batch(self, batch: Batch, seed: int) -> np.ndarray:
        return median_terms(batch, self.sparse, self.min_support)


class TrimmedMean(BaseStrategy):
    """Per coordinate, drop the ``b = floor(beta * m)`` largest and smallest of its ``m`` values
    (``m = n`` when not sparse), average the rest.

    Args: ``beta`` (fraction trimmed from each end, in [0, 0.5), default 0.25), ``sparse`` (default
    true), ``min_support`` (default 1).
    """

    name = "trimmed_mean"
    kind = "coordinate"
    windowed = True

    def configure(self, a: Args) -> None:
        self.beta = a.number("beta", 0.25, low=0.0, high=0.5, high_open=True)
        self.sparse = a.boolean("sparse", True)
        self.min_support = a.integer("min_support", None, low=1)

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        n = batch.n
        support = min(n, self.min_support or 1) if self.sparse else n

        def chunk_fn(chunk: np.ndarray) -> np.ndarray:
            s, m = _support(chunk, support)
            b = np.floor(self.beta * m + 1e-9).astype(np.int64)
            acc = np.zeros(chunk.shape[1], dtype=np.float64)
            for k in range(n):  # rows b .. m-b-1 of each column, added in row order
                acc += np.where((k >= b) & (k < m - b), s[k], 0.0)
            acc /= m - 2 * b
            return acc * (m / n)

        return _columns(batch, chunk_fn)

    def attribute_batch(self, batch: Batch, seed: int) -> np.ndarray:
        """The kept values (sorted positions b .. m-b-1) each times ``m / (n (m - 2b))``, to their rows."""
        support = min(batch.n, self.min_support or 1) if self.sparse else batch.n
        k = np.arange(batch.n)[:, None]

        def weights(m: np.ndarray) -> np.ndarray:
            b = np.floor(self.beta * m + 1e-9).astype(np.int64)
            return ((k >= b) & (k < m - b)) / (m - 2 * b)

        return _order_terms(batch, support, weights)


def _norms(diffs: np.ndarray) -> list[float]:
    return [math.sqrt(sqnorm(diffs[i])) for i in range(diffs.shape[0])]


class CenteredClip(BaseStrategy):
    """CenteredClip (Karimireddy, He & Jaggi 2021): ``v <- v + (1/n) sum_i clip_tau(x_i - v)``, where
    ``clip_tau(d) = d * min(1, tau / ||d||)`` (L2 over the whole delta), for ``iterations`` steps.

    Start ``v_0``: the sparse-aware coordinate median padded to a majority (``start = "median"``,
    default; ``sparse`` as for coordinate_median, ``min_support`` default ``n // 2 + 1`` here, so
    that a coordinate only a minority touches starts at 0 and attackers cannot place the start) or
    the mean (``start = "mean"``; a poor start under large outliers). ``tau`` (> 0) defaults to the
    lower median of ``||x_i - v_0||`` over the deltas, so at least half of them are unclipped in the
    first step and each outlier moves v by at most ``tau / n`` per step. Args: ``tau``,
    ``iterations`` (default 5), ``start``, ``sparse``, ``min_support``.
    """

    name = "centered_clip"
    kind = "vector"

    def configure(self, a: Args) -> None:
        self.tau = a.number("tau", None, low=0.0, low_open=True)
        self.iterations = a.integer("iterations", 5, low=1, high=10_000)
        self.start = a.choice("start", "median", ("median", "mean"))
        self.sparse = a.boolean("sparse", True)
        self.min_support = a.integer("min_support", None, low=1)

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        return self._clip(batch, None)

    def attribute_batch(self, batch: Batch, seed: int) -> np.ndarray:
        """The start's terms (the median's, or ``x_i / n``), plus every step's ``c_i (x_i - v) / n``."""
        terms = np.zeros_like(batch.matrix)
        self._clip(batch, terms)
        return terms

    def _clip(self, batch: Batch, terms: np.ndarray | None) -> np.ndarray:
        """The merge; with ``terms``, each row's term of it is added there as it is computed."""
        n, x = batch.n, batch.matrix
        if self.start == "median":
            support = self.min_support if self.min_support is not None else n // 2 + 1
            v = median_of(batch, self.sparse, support)
            if terms is not None:
                terms += median_terms(batch, self.sparse, support)
        else:
            v = rowsum(x) / n
            if terms is not None:
                terms += x / n
        tau = self.tau
        if tau is None:
            tau = sorted(_norms(x - v))[(n - 1) // 2]
            if tau == 0.0:
                return v
        for _ in range(self.iterations):
            diffs = x - v
            scale = np.array([1.0 if d <= tau else tau / d for d in _norms(diffs)])
            diffs *= scale[:, None]
            if terms is not None:
                terms += diffs / n
            step = rowsum(diffs)
            step /= n
            v = v + step
        return v


class MultiKrum(BaseStrategy):
    """Multi-Krum (Blanchard et al. 2017): score each delta by the sum of its squared L2 distances to
    its ``n - f - 2`` nearest other deltas, average the ``m`` best-scored (unweighted).

    Args: ``f`` (assumed attackers, default ``n // 4``), ``m`` (deltas averaged, default ``n - f``).
    With fewer than ``f + 3`` deltas the score uses the nearest one (at least one neighbour). Equal
    scores are broken by the canonical order.
    """

    name = "multi_krum"
    kind = "vector"

    def configure(self, a: Args) -> None:
        self.f = a.integer("f", None, low=0)
        self.m = a.integer("m", None, low=1)

    def selected(self, batch: Batch) -> list[int]:
        n, x = batch.n, batch.matrix
        f = self.f if self.f is not None else n // 4
        m = min(n, self.m if self.m is not None else max(1, n - f))
        if n == 1:
            return [0]
        dist = np.zeros((n, n))
        for i in range(n):
            for j in range(i + 1, n):
                dist[i, j] = dist[j, i] = sqnorm(x[i] - x[j])
        k = min(n - 1, max(1, n - f - 2))
        scores = []
        for i in range(n):
            nearest = sorted(float(dist[i, j]) for j in range(n) if j != i)[:k]
            total = 0.0
            for d in nearest:  # ascending: a fixed order
                total += d
            scores.append(total)
        return sorted(sorted(range(n), key=lambda i: (scores[i], i))[:m])

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        chosen = self.selected(batch)
        out = rowsum(batch.matrix[chosen])
        out /= len(chosen)
        return out

    def attribute_batch(self, batch: Batch, seed: int) -> np.ndarray:
        chosen = self.selected(batch)
        terms = np.zeros_like(batch.matrix)
        terms[chosen] = batch.matrix[chosen] / len(chosen)
        return terms


class GeometricMedian(BaseStrategy):
    """The geometric median ``argmin_v sum_i ||x_i - v||`` by Weiszfeld's iteration (unweighted):
    ``v <- sum_i x_i / max(eps, ||x_i - v||) / sum_i 1 / max(eps, ||x_i - v||)`` from the mean, for at
    most ``iterations`` steps (stops early when a step leaves v unchanged). ``eps`` smooths the
    singularity at a data point (Vardi & Zhang). Args: ``iterations`` (default 50), ``eps`` (> 0,
    default 1e-10).
    """

    name = "geometric_median"
    kind = "vector"

    def configure(self, a: Args) -> None:
        self.iterations = a.integer("iterations", 50, low=1, high=100_000)
        self.eps = a.number("eps", 1e-10, low=0.0, low_open=True)

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        return self._weiszfeld(batch)[0]

    def attribute_batch(self, batch: Batch, seed: int) -> np.ndarray:
        """The result is ``sum_i a_i x_i``, ``a_i = inv_i / sum inv`` of the last step: row i, ``a_i x_i``."""
        inv = self._weiszfeld(batch)[1]
        return batch.matrix * (np.array(inv) / math.fsum(inv))[:, None]

    def _weiszfeld(self, batch: Batch) -> tuple[np.ndarray, list[float]]:
        """The merge, and the inverse distances of the step that gave it (every step runs at least once)."""
        n, x = batch.n, batch.matrix
        v = rowsum(x) / n
        for _ in range(self.iterations):
            inv = [1.0 / max(self.eps, d) for d in _norms(x - v)]
            new = rowsum(x * np.array(inv)[:, None])
            new /= math.fsum(inv)
            if np.array_equal(new, v):
                break
            v = new
        return v, inv
