"""The canonical input of every strategy: a round's deltas as one dense float64 matrix.

:func:`make_batch` turns ``deltas`` (each an :class:`Update`, a :class:`SignedUpdate`, a mapping
``name -> SparseTensor | np.ndarray``, or a sequence of :class:`SparseTensor`) and their weights into
a :class:`Batch`:

* the tensor names are the union over the deltas, sorted; a tensor a delta does not mention is all
  zeros in it; the same name must have the same shape everywhere;
* values become float64 (exact for the codec's float32 values); a coordinate is **touched** by a
  delta when its value is non-zero (an explicit 0 in a sparse tensor counts as untouched, so a sparse
  and a dense form of the same delta are the same input);
* deltas of weight 0 are dropped (they contribute nothing to any strategy);
* the rows are put in a **canonical order**: sorted by the sha256 of each delta's non-zero
  coordinates and values (and its weight). Every strategy is therefore exactly invariant under a
  permutation of its inputs (the same set of updates gives the same bytes whatever order the node
  received them in), and "update index" (DARE's random stream) means the index in this order.

Reductions then have a fixed order: across deltas, explicit row-after-row additions in canonical
order (:func:`rowsum`); across coordinates (norms, distances), numpy's ``add.reduce`` of a
contiguous 1-D float64 array (a fixed pairwise-summation algorithm, single-threaded in numpy, no
reassociation by the compiler). BLAS (``np.dot``, ``@``, ``np.linalg.norm``) is never used: its
kernels differ between machines and thread counts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from potluck.updates.codec import SignedUpdate, SparseTensor, Update

__all__ = ["Batch", "Delta", "Slot", "make_batch", "rowsum", "sqnorm"]

Delta = Update | SignedUpdate | Mapping[str, "SparseTensor | np.ndarray"] | Sequence[SparseTensor]


class InputError(ValueError):
    """Malformed merge input (shapes disagree, non-finite values, bad weights)."""


@dataclass(frozen=True)
class Slot:
    name: str
    shape: tuple[int, ...]
    offset: int
    size: int


@dataclass(frozen=True)
class Batch:
    """``matrix[i]`` is delta i (canonical order) over all tensors, concatenated in name order."""

    slots: tuple[Slot, ...]
    matrix: np.ndarray  # float64 (n, L), C-contiguous
    weights: np.ndarray  # float64 (n,), all > 0
    int_weights: tuple[int, ...] | None  # the weights as ints, when they all are integers

    @property
    def n(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def length(self) -> int:
        return int(self.matrix.shape[1])

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """A flat float64 vector of length L as ``{name: array of the tensor's shape}``."""
        return {s.name: flat[s.offset : s.offset + s.size].reshape(s.shape).copy() for s in self.slots}


def _tensors(delta: Delta) -> Iterable[tuple[str, tuple[int, ...], np.ndarray | SparseTensor]]:
    if isinstance(delta, SignedUpdate):
        delta = delta.update
    if isinstance(delta, Update):
        delta = delta.tensors
    if isinstance(delta, Mapping):
        for name, t in delta.items():
            if isinstance(t, SparseTensor):
                if t.name != name:
                    raise InputError(f"tensor {t.name!r} is filed under {name!r}")
                yield name, tuple(int(d) for d in t.shape), t
            else:
                a = np.asarray(t)
                yield name, tuple(int(d) for d in a.shape), a
        return
    for t in delta:
        if not isinstance(t, SparseTensor):
            raise InputError(f"a sequence delta holds SparseTensors, got {type(t).__name__}")
        yield t.name, tuple(int(d) for d in t.shape), t


def _dense(name: str, shape: tuple[int, ...], t: np.ndarray | SparseTensor) -> np.ndarray:
    size = math.prod(shape)
    if isinstance(t, SparseTensor):
        idx = np.asarray(t.indices)
        vals = np.asarray(t.values)
        if idx.ndim != 1 or vals.shape != idx.shape:
            raise InputError(f"{name}: indices and values must be 1-D of equal length")
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise InputError(f"{name}: indices must be integers")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= size or np.unique(idx).size != idx.size):
            raise InputError(f"{name}: indices out of range or repeated")
        out = np.zeros(size, dtype=np.float64)
        out[idx] = vals.astype(np.float64)
    else:
        if not (np.issubdtype(t.dtype, np.floating) or np.issubdtype(t.dtype, np.integer)):
            raise InputError(f"{name}: dtype {t.dtype} is not numeric")
        out = np.array(t, dtype=np.float64).reshape(-1)
    if not np.isfinite(out).all():
        raise InputError(f"{name}: NaN or infinite values")
    return out


def _check_weights(weights: Sequence[float], n: int) -> list[float]:
    if len(weights) != n:
        raise InputError(f"{n} deltas but {len(weights)} weights")
    out = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, int | float | np.integer | np.floating):
            raise InputError(f"a weight is a number, got {w!r}")
        if not math.isfinite(float(w)) or w < 0:
            raise InputError(f"a weight is finite and >= 0, got {w!r}")
        out.append(w)
    return out


def make_batch(deltas: Sequence[Delta], weights: Sequence[float]) -> Batch:
    """The canonical :class:`Batch` of ``deltas`` (see the module doc); :class:`InputError` if malformed."""
    weights = _check_weights(list(weights), len(deltas))
    shapes: dict[str, tuple[int, ...]] = {}
    rows: list[dict[str, np.ndarray]] = []
    kept: list[float] = []
    for delta, w in zip(deltas, weights, strict=True):
        row: dict[str, np.ndarray] = {}
        for name, shape, t in _tensors(delta):
            if not isinstance(name, str) or not name:
                raise InputError(f"a tensor name is a non-empty string, got {name!r}")
            if shapes.setdefault(name, shape) != shape:
                raise InputError(f"{name}: shape {shape} here, {shapes[name]} elsewhere")
            if name in row:
                raise InputError(f"{name}: twice in one delta")
            row[name] = _dense(name, shape, t)
        if w == 0:
            continue
        rows.append(row)
        kept.append(w)
    slots, offset = [], 0
    for name in sorted(shapes):
        size = math.prod(shapes[name])
        slots.append(Slot(name, shapes[name], offset, size))
        offset += size
    matrix = np.zeros((len(rows), offset), dtype=np.float64)
    keys = []
    for i, row in enumerate(rows):
        h = hashlib.sha256(b"potluck/merge/row/v1")
        for s in slots:
            v = row.get(s.name)
            if v is None:
                continue
            matrix[i, s.offset : s.offset + s.size] = v
            nz = np.flatnonzero(v)
            h.update(s.name.encode() + b"\0")
            h.update(nz.astype("<i8").tobytes())
            h.update(v[nz].astype("<f8").tobytes())
        keys.append((h.digest(), float(kept[i])))
    order = sorted(range(len(rows)), key=lambda i: keys[i])
    matrix = np.ascontiguousarray(matrix[order])
    ordered = [kept[i] for i in order]
    ints = None
    if all(float(w).is_integer() for w in ordered):
        ints = tuple(int(w) for w in ordered)
    return Batch(tuple(slots), matrix, np.asarray(ordered, dtype=np.float64), ints)


def rowsum(m: np.ndarray) -> np.ndarray:
    """Sum of the rows of ``m`` (k, c), added one after the other in row order: a fixed order."""
    if m.shape[0] == 0:
        return np.zeros(m.shape[1:], dtype=np.float64)
    acc = np.array(m[0], dtype=np.float64)
    for i in range(1, m.shape[0]):
        acc += m[i]
    return acc


def sqnorm(v: np.ndarray) -> float:
    """``sum(v * v)`` of a 1-D float64 vector by numpy's add.reduce (fixed pairwise order, no BLAS)."""
    v = np.ascontiguousarray(v, dtype=np.float64)
    return float(np.add.reduce(v * v))
