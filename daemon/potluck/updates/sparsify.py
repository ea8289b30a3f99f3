"""Top-k sparsification by magnitude, with error feedback.

Representation: numpy float32 throughout (torch CPU tensors are accepted through ``np.asarray``,
zero-copy). Indices are flat C-order int64, sorted.

Method (:func:`topk_indices`), for tensors above 2**20 elements:

1. Take a strided sample of ``s`` magnitudes (random offset from a fixed seed, stride coprime to
   the row length; ``s`` chosen so that ~2000 sampled values lie above the k-th largest).
2. Take as threshold the sample value at rank ``k_s + 6 sqrt(k_s)`` from the top (``k_s = k s / n``),
   i.e. a little *below* the true k-th magnitude: one chunked pass collects every element at or
   above it (about ``k (1 + 6/sqrt(k_s))``, i.e. ~13% more than k, candidates).
3. An exact ``argpartition`` among the candidates keeps precisely the k largest.

So k is **exact** (tolerance 0%), not approximate: the sample only sizes the candidate set. If
the sample was unlucky (fewer than k candidates: a 6-sigma event for a random sample; a stride
that lines up with structure in the tensor could also cause it) it falls back to an exact
partition of the whole tensor. Cost ~0.1 s per 100M floats on 2 cores, against ~2.5 s for
``torch.topk``. Small tensors use ``argpartition`` directly. Zeros are never sent, so a tensor
with fewer than k non-zeros yields all of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from potluck.updates.codec import SparseTensor
from potluck.updates.quantize import BLOCK, SIGN, VALUE_ENCODINGS, block_max, roundtrip

__all__ = [
    "DEFAULT_DENSITY",
    "SCOPES",
    "ErrorFeedback",
    "k_for",
    "scheduled_density",
    "sign_survivors",
    "sparsify",
    "topk_indices",
]

DEFAULT_DENSITY = 0.01
SCOPES = ("tensor", "model")  # what one top-k threshold covers (ErrorFeedback)
_EXACT_BELOW = 1 << 20
_CHUNK = 1 << 18  # elements per pass step: the temporaries stay in L2 cache
_SAMPLE_ABOVE = 2000  # expected sampled values above the threshold
_MAX_SAMPLE = 1 << 22
_SIGMAS = 6.0


def k_for(numel: int, density: float) -> int:
    """Number of entries kept from a tensor of ``numel`` elements (at least one)."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return min(numel, max(1, round(density * numel)))


def scheduled_density(r: int, density: float, start_density: float = 0.0, start_rounds: int = 0) -> float:
    """The top-k density of round ``r``: ``start_density`` in the first ``start_rounds`` rounds, then
    ``density`` (``start_density`` 0: no sparse start). A sparse start spends fewer bytes while the
    model is far from converged and the full density for the final accuracy (bench/README.md)."""
    return start_density if r < start_rounds and start_density > 0 else density


def _flat(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    return np.ascontiguousarray(a).reshape(-1)


def _at_least(x: np.ndarray, threshold: float) -> np.ndarray:
    """Flat indices of |x| >= threshold, in cache-sized chunks (no full-size temporaries)."""
    buf = np.empty(min(_CHUNK, x.size), np.float32)
    mask = np.empty(buf.size, np.bool_)
    parts = []
    thr = np.float32(threshold)
    for start in range(0, x.size, _CHUNK):
        chunk = x[start : start + _CHUNK]
        n = chunk.size
        np.abs(chunk, out=buf[:n])
        np.greater_equal(buf[:n], thr, out=mask[:n])
        hit = np.flatnonzero(mask[:n])
        if hit.size:
            parts.append(hit + start)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _top_of(x: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The k sorted ``candidates`` of largest |x| (all if fewer), zeros dropped, order kept."""
    mags = np.abs(x[candidates])
    if candidates.size > k:
        kth = np.partition(mags, candidates.size - k)[candidates.size - k]
        above = mags > kth
        ties = np.flatnonzero(mags == kth)[: k - int(np.count_nonzero(above))]
        above[ties] = True  # among equal magnitudes, the lowest indices win
        candidates, mags = candidates[above], mags[above]
    return candidates[mags > 0].astype(np.int64, copy=False)


def topk_indices(x: np.ndarray, k: int, *, seed: int = 0, row: int = 1) -> np.ndarray:
    """Sorted flat indices of the ``k`` largest-magnitude non-zero entries of ``x`` (exactly k if
    there are that many non-zeros). Deterministic for a given ``seed``; ``row`` is the tensor's last
    dimension (only used to pick a sampling stride)."""
    flat = _flat(x)
    n = flat.size
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, np.int64)
    if n <= _EXACT_BELOW or k * 4 > n:
        return _top_of(flat, np.arange(n, dtype=np.int64), k)
    s = min(_MAX_SAMPLE, n, max(1 << 16, math.ceil(_SAMPLE_ABOVE * n / k)))
    # A strided sample (sequential memory access, ~10x cheaper than a random gather) with a step
    # coprime to the row length, so that it visits every column of a matrix rather than a few.
    step = max(1, n // s)
    while math.gcd(step, row) != 1:
        step += 1
    offset = int(np.random.default_rng(seed).integers(0, step))
    sample = np.abs(flat[offset::step])
    s = sample.size
    k_s = k * s / n
    rank = math.ceil(k_s + _SIGMAS * math.sqrt(k_s) + 16)  # from the top
    if rank >= s:
        return _top_of(flat, np.arange(n, dtype=np.int64), k)
    threshold = float(np.partition(sample, s - rank)[s - rank])
    if threshold == 0.0:  # mostly zeros: the non-zeros are the candidates
        threshold = float(np.finfo(np.float32).smallest_subnormal)
        return _top_of(flat, _at_least(flat, threshold), k)
    candidates = _at_least(flat, threshold)
    if candidates.size < k:  # unlucky sample (~6 sigma): exact on everything
        return _top_of(flat, np.arange(n, dtype=np.int64), k)
    return _top_of(flat, candidates, k)


def sparsify(name: str, x: np.ndarray, density: float = DEFAULT_DENSITY) -> SparseTensor:
    """The top ``density`` fraction of ``x`` by magnitude, as a :class:`SparseTensor` (float32 values)."""
    a = np.asarray(x)
    flat = _flat(a)
    idx = topk_indices(flat, k_for(flat.size, density), row=a.shape[-1] if a.ndim else 1)
    return SparseTensor(name, tuple(a.shape), idx, flat[idx])


def sign_survivors(values: np.ndarray) -> np.ndarray:
    """Which of the top-k ``values`` (in index order) to send as signs: a mask such that every kept
    value is at least half the largest magnitude of its block of 256 *kept* values (the block's
    scale). So ``|v - sign(v) * scale| <= |v|``: no entry's residual grows. A smaller value would be
    sent more than twice too large; it stays in the residual and costs no index bits. Dropping one
    shifts the later blocks, so this repeats until nothing changes (two or three passes)."""
    mags = np.abs(np.asarray(values, dtype=np.float32))
    keep = np.ones(mags.size, np.bool_)
    while True:
        kept = np.flatnonzero(keep)
        m = mags[kept]
        low = m < np.repeat(block_max(m) / np.float32(2), BLOCK)[: m.size]
        if not low.any():
            return keep
        keep[kept[low]] = False


class ErrorFeedback:
    """Top-k with memory: what is not sent (and the quantization error of what is) is carried over.

    ``residual[name]`` holds the part of the accumulated delta not yet published. Each
    :meth:`compress` adds the new delta to it, publishes its top-k (as the receiver will see it
    after quantization) and keeps the rest, so the sum of everything published plus the residual
    always equals the sum of all deltas given: nothing is lost, only delayed. ``weights`` changes
    which entries are published first (top-k of ``|residual| * weight``), never what is kept.
    ``decay`` < 1 multiplies the residual by it before each delta is added: what stays unsent for
    rounds fades instead of going out late in one burst (bench/README.md#lm: with ``weights``, an
    entry's residual can grow unsent for rounds; a 0.9 decay steadied the lm bench's loss).
    """

    def __init__(self, density: float = DEFAULT_DENSITY, values: str = "int8", scope: str = "tensor") -> None:
        """``scope``: "tensor" keeps the top ``density`` of each tensor; "model" the top ``density`` of
        all entries together (one threshold: tensors with larger updates get more of the budget, and
        a tensor with none is left out of the update, saving its entry's header bytes; it costs a
        float32 copy of the model while choosing)."""
        if values not in VALUE_ENCODINGS:
            raise ValueError(f"values must be one of {sorted(VALUE_ENCODINGS)}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        k_for(1, density)  # validates density
        self.density = density
        self.densities: dict[str, float] = {}  # per tensor, where it differs from ``density``
        # per tensor, a non-negative weight per entry: top-k of |residual| * weight (the sender's choice
        # of entries; the wire is unchanged). potluck join --salience: Adam's gradient scale ** s
        self.weights: dict[str, np.ndarray] = {}
        self.value_encoding = VALUE_ENCODINGS[values]
        self.scope = scope
        # the residual's factor before each compress adds a delta (1: nothing is lost, only delayed;
        # potluck join --residual-decay)
        self.decay = 1.0
        self.residual: dict[str, np.ndarray] = {}

    def compress(self, delta: Mapping[str, np.ndarray]) -> list[SparseTensor]:
        """Add ``delta`` to the residual and take the top-k (of each tensor, or of the model) out of it."""
        if self.decay != 1.0:  # the unsent rest fades: a stale residual is not sent late, in a burst
            for acc in self.residual.values():
                acc *= np.float32(self.decay)
        for name in sorted(delta):
            d = np.asarray(delta[name])
            acc = self.residual.get(name)
            if acc is None or acc.shape != d.shape:
                self.residual[name] = np.array(d, dtype=np.float32, order="C")
            else:
                np.add(acc, d, out=acc, casting="same_kind")
        chosen = (
            self._model_topk(sorted(delta)) if self.scope == "model" else self._tensor_topk(sorted(delta))
        )
        out = []
        for name, idx in chosen.items():
            acc = self.residual[name]
            flat = acc.reshape(-1)
            if self.value_encoding == SIGN:
                idx = idx[sign_survivors(flat[idx])]
            sent = roundtrip(flat[idx], self.value_encoding)
            flat[idx] -= sent  # what the receiver won't see stays here
            out.append(SparseTensor(name, tuple(acc.shape), idx, sent))
        return out

    def _score(self, name: str) -> np.ndarray:
        """What top-k ranks a tensor's entries by: |residual|, times its weights where it has them."""
        flat = self.residual[name].reshape(-1)
        w = self.weights.get(name)
        if w is None:
            return flat
        w = np.asarray(w, np.float32).reshape(-1)
        if w.size != flat.size or not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"{name}: top-k weights must be {flat.size} finite non-negative values")
        return np.abs(flat) * w

    def _tensor_topk(self, names: list[str]) -> dict[str, np.ndarray]:
        out = {}
        for name in names:
            acc = self.residual[name]
            score = self._score(name)
            density = self.densities.get(name, self.density)
            out[name] = topk_indices(score, k_for(score.size, density), row=acc.shape[-1] if acc.ndim else 1)
        return out

    def _model_topk(self, names: list[str]) -> dict[str, np.ndarray]:
        flats = [self._score(name) for name in names]
        ends = np.cumsum([f.size for f in flats])
        idx = topk_indices(np.concatenate(flats), k_for(int(ends[-1]), self.density))
        cuts = np.searchsorted(idx, ends)
        out = {}
        for i, name in enumerate(names):
            part = idx[(cuts[i - 1] if i else 0) : cuts[i]]
            if part.size:
                out[name] = part - (ends[i - 1] if i else 0)
        for name, density in self.densities.items():  # a group's max_density caps its tensors' share
            cap = k_for(self.residual[name].size, density) if name in out else 0
            if name in out and out[name].size > cap:
                flat = self._score(name)
                out[name] = out[name][np.sort(np.argsort(-np.abs(flat[out[name]]), kind="stable")[:cap])]
        return out

    def residual_norm(self) -> float:
        return math.sqrt(
            sum(
                float(np.dot(r.reshape(-1).astype(np.float64), r.reshape(-1))) for r in self.residual.values()
            )
        )
