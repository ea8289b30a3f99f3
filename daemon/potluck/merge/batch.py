"""The canonical input of every strategy: a round's deltas as one float64 matrix (all coordinates, or
a window of them).

:func:`make_batch` turns ``deltas`` (each an :class:`Update`, a :class:`SignedUpdate`, a mapping
``name -> SparseTensor | np.ndarray``, or a sequence of :class:`SparseTensor`) and their weights into
a :class:`Batch`:

* the **layout** is the tensors in sorted-name order, concatenated (flat C order within a tensor):
  the union of the names the deltas mention (the same name must have the same shape everywhere), or,
  given ``shapes``, exactly the tensors of ``shapes`` (the model's layout; a delta naming another
  tensor, or one with another shape, is malformed); a tensor a delta does not mention is all zeros
  in it;
* values become float64 (exact for the codec's float32 values); a coordinate is **touched** by a
  delta when its value is non-zero (an explicit 0 in a sparse tensor counts as untouched, so a sparse
  and a dense form of the same delta are the same input);
* deltas of weight 0 are dropped (they contribute nothing to any strategy);
* the rows are put in a **canonical order**: sorted by the sha256 of each delta's non-zero
  coordinates and values (and its weight). Every strategy is therefore exactly invariant under a
  permutation of its inputs (the same set of updates gives the same bytes whatever order the node
  received them in), and "update index" (DARE's random stream) means the index in this order. The key
  is computed from each tensor's non-zero entries (a sparse tensor is never densified for it), so
  the order does not depend on ``shapes`` or ``columns``;
* given ``columns`` (sorted, unique flat indices into the layout), the matrix holds only those
  columns: the **window** a reducer of one slice of the all-reduce merges. It is filled without
  densifying a row: a sparse tensor's indices are located among the window's columns by binary
  search, a dense tensor is indexed, so building it costs O(total nnz * log + n * len(columns)) (plus
  one pass over each dense tensor for its key). ``Batch.slots`` still describe the whole layout, and
  :meth:`Batch.segments` / :meth:`Batch.nonzeros` give the per-tensor view a strategy with a
  per-update step (TIES, DARE) needs.

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
from dataclasses import dataclass, field

import numpy as np

from potluck.updates.codec import SignedUpdate, SparseTensor, Update

__all__ = ["Batch", "Delta", "Segment", "Slot", "delta_tensors", "make_batch", "rowsum", "sqnorm"]

Delta = Update | SignedUpdate | Mapping[str, "SparseTensor | np.ndarray"] | Sequence[SparseTensor]


class InputError(ValueError):
    """Malformed merge input (shapes disagree, non-finite values, bad weights, bad columns)."""


@dataclass(frozen=True)
class Slot:
    name: str
    shape: tuple[int, ...]
    offset: int
    size: int


@dataclass(frozen=True)
class Segment:
    """The matrix columns ``lo:hi`` of a batch are tensor ``slot`` at flat positions ``local`` within it.

    ``local`` is None when the segment is the whole tensor in order (a batch without a window).
    """

    slot: Slot
    lo: int
    hi: int
    local: np.ndarray | None


@dataclass(frozen=True)
class _Part:
    """One tensor of one delta, validated, not densified: ``indices`` None for a dense tensor."""

    slot: int  # index into the layout's slots (set once the layout is known)
    indices: np.ndarray | None  # int64, in range, unique (any order)
    values: np.ndarray  # 1-D: the sparse values, or the dense tensor flattened (original dtype)

    def nonzeros(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted flat indices within the tensor of its non-zero entries, and their float64 values."""
        if self.indices is None:
            nz = np.flatnonzero(self.values)
            return nz.astype(np.int64, copy=False), self.values[nz].astype(np.float64)
        idx, vals = self.indices, self.values.astype(np.float64)
        if idx.size > 1 and not (idx[1:] > idx[:-1]).all():
            order = np.argsort(idx, kind="stable")
            idx, vals = idx[order], vals[order]
        keep = vals != 0
        return idx[keep], vals[keep]


@dataclass(frozen=True)
class Batch:
    """``matrix[i]`` is delta i (canonical order) over the layout's tensors, concatenated in name order;
    with a window, only the layout's flat ``columns`` of it."""

    slots: tuple[Slot, ...]  # the whole layout, with or without a window
    matrix: np.ndarray  # float64 (n, L), or (n, len(columns)) with a window; C-contiguous
    weights: np.ndarray  # float64 (n,), all > 0
    int_weights: tuple[int, ...] | None  # the weights as ints, when they all are integers
    columns: np.ndarray | None = None  # int64, sorted, unique: the flat indices of matrix's columns
    parts: tuple[tuple[_Part, ...], ...] | None = field(default=None, repr=False, compare=False)
    order: tuple[int, ...] = field(default=(), repr=False, compare=False)  # row i is input delta order[i]

    @property
    def n(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def length(self) -> int:
        """The number of columns of ``matrix`` (the window's length with a window)."""
        return int(self.matrix.shape[1])

    @property
    def layout_length(self) -> int:
        """The number of coordinates of the whole layout."""
        return self.slots[-1].offset + self.slots[-1].size if self.slots else 0

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """A flat float64 vector of length L as ``{name: array of the tensor's shape}`` (no window)."""
        if self.columns is not None:
            raise ValueError("a window batch cannot be split into whole tensors")
        return {s.name: flat[s.offset : s.offset + s.size].reshape(s.shape).copy() for s in self.slots}

    def segments(self) -> list[Segment]:
        """The tensors with columns in the matrix, in order: where their columns are (:class:`Segment`)."""
        if self.columns is None:
            return [Segment(s, s.offset, s.offset + s.size, None) for s in self.slots if s.size]
        bounds = np.searchsorted(self.columns, [s.offset for s in self.slots] + [self.layout_length])
        out = []
        for k, s in enumerate(self.slots):
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            if hi > lo:
                out.append(Segment(s, lo, hi, self.columns[lo:hi] - s.offset))
        return out

    def nonzeros(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Row i's non-zero entries over the **whole** layout (also with a window): their sorted flat
        indices (int64) and float64 values. O(row's nnz) for sparse tensors."""
        if self.columns is None or self.parts is None:
            if self.columns is not None:
                raise ValueError("this window batch does not hold its rows' tensors")
            row = self.matrix[i]
            nz = np.flatnonzero(row).astype(np.int64, copy=False)
            return nz, row[nz]
        pos, vals = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.float64)]
        for part in self.parts[i]:  # in slot order
            nz, v = part.nonzeros()
            pos.append(nz + self.slots[part.slot].offset)
            vals.append(v)
        return np.concatenate(pos), np.concatenate(vals)

    def locate(self, flat: np.ndarray) -> np.ndarray:
        """The matrix columns holding the layout's flat indices ``flat`` (those in the window; in order)."""
        flat = np.asarray(flat, dtype=np.int64)
        if self.columns is None:
            return flat
        at = np.searchsorted(self.columns, flat)
        hit = at < self.columns.size
        hit[hit] = self.columns[at[hit]] == flat[hit]
        return at[hit]


def delta_tensors(delta: Delta) -> Iterable[tuple[str, tuple[int, ...], np.ndarray | SparseTensor]]:
    """(name, shape, tensor) of every tensor of ``delta``, whichever of its forms it comes in."""
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


def _part(name: str, shape: tuple[int, ...], t: np.ndarray | SparseTensor) -> _Part:
    """Validate one tensor (indices, dtype, finiteness) without densifying a sparse one."""
    size = math.prod(shape)
    if isinstance(t, SparseTensor):
        idx = np.asarray(t.indices)
        vals = np.asarray(t.values)
        if idx.ndim != 1 or vals.shape != idx.shape:
            raise InputError(f"{name}: indices and values must be 1-D of equal length")
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise InputError(f"{name}: indices must be integers")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= size):
            raise InputError(f"{name}: indices out of range or repeated")
        if idx.size > 1 and not (idx[1:] > idx[:-1]).all():
            s = np.sort(idx)
            if not (s[1:] > s[:-1]).all():
                raise InputError(f"{name}: indices out of range or repeated")
        if vals.size and not np.isfinite(vals.astype(np.float64)).all():
            raise InputError(f"{name}: NaN or infinite values")
        return _Part(-1, idx, vals)
    if not (np.issubdtype(t.dtype, np.floating) or np.issubdtype(t.dtype, np.integer)):
        raise InputError(f"{name}: dtype {t.dtype} is not numeric")
    flat = t.reshape(-1)
    if np.issubdtype(flat.dtype, np.floating):
        if flat.dtype.itemsize > 8:  # long double: keep what float64 makes of it (zeros included)
            flat = flat.astype(np.float64)
        if not np.isfinite(flat).all():
            raise InputError(f"{name}: NaN or infinite values")
    return _Part(-1, None, flat)


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


def _check_shapes(shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    if not isinstance(shapes, Mapping):
        raise InputError(f"shapes is a mapping name -> shape, got {type(shapes).__name__}")
    out = {}
    for name, shape in shapes.items():
        if not isinstance(name, str) or not name:
            raise InputError(f"a tensor name is a non-empty string, got {name!r}")
        try:
            dims = tuple(shape)
        except TypeError:
            raise InputError(f"{name}: a shape is a sequence of ints, got {shape!r}") from None
        if not all(isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 0 for d in dims):
            raise InputError(f"{name}: a shape is a sequence of ints >= 0, got {shape!r}")
        out[name] = tuple(int(d) for d in dims)
    return out


def _check_columns(columns: np.ndarray, length: int) -> np.ndarray:
    c = np.asarray(columns)
    if c.ndim != 1 or (c.size and not np.issubdtype(c.dtype, np.integer)):
        raise InputError(f"columns is a 1-D integer array, got shape {c.shape} dtype {c.dtype}")
    c = c.astype(np.int64)
    if c.size and (c[0] < 0 or c[-1] >= length or not (c[1:] > c[:-1]).all()):
        raise InputError(f"columns must be sorted, unique indices in [0, {length})")
    return c


def _row_key(parts: Mapping[str, _Part], weight: float) -> tuple[bytes, float]:
    h = hashlib.sha256(b"potluck/merge/row/v1")
    for name in sorted(parts):
        nz, vals = parts[name].nonzeros()
        h.update(name.encode() + b"\0")
        h.update(nz.astype("<i8").tobytes())
        h.update(vals.astype("<f8").tobytes())
    return h.digest(), float(weight)


def make_batch(
    deltas: Sequence[Delta],
    weights: Sequence[float],
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    columns: np.ndarray | None = None,
) -> Batch:
    """The canonical :class:`Batch` of ``deltas`` (see the module doc); :class:`InputError` if malformed.

    ``shapes``: the layout's tensors (default: the union of the deltas' tensors). ``columns``: sorted,
    unique int64 flat indices into the layout; the matrix then holds only those columns.
    """
    weights = _check_weights(list(weights), len(deltas))
    fixed = shapes is not None
    layout: dict[str, tuple[int, ...]] = _check_shapes(shapes) if fixed else {}
    rows: list[dict[str, _Part]] = []
    kept: list[float] = []
    given: list[int] = []  # the input index of each row kept
    keys: list[tuple[bytes, float]] = []
    for k, (delta, w) in enumerate(zip(deltas, weights, strict=True)):
        row: dict[str, _Part] = {}
        for name, shape, t in delta_tensors(delta):
            if not isinstance(name, str) or not name:
                raise InputError(f"a tensor name is a non-empty string, got {name!r}")
            if fixed and name not in layout:
                raise InputError(f"{name}: not a tensor of the layout")
            if layout.setdefault(name, shape) != shape:
                where = "in the layout" if fixed else "elsewhere"
                raise InputError(f"{name}: shape {shape} here, {layout[name]} {where}")
            if name in row:
                raise InputError(f"{name}: twice in one delta")
            row[name] = _part(name, shape, t)
        if w == 0:
            continue
        rows.append(row)
        kept.append(w)
        given.append(k)
        keys.append(_row_key(row, w))
    slots, offset, index = [], 0, {}
    for name in sorted(layout):
        size = math.prod(layout[name])
        index[name] = len(slots)
        slots.append(Slot(name, layout[name], offset, size))
        offset += size
    order = sorted(range(len(rows)), key=lambda i: keys[i])
    ordered_parts = tuple(
        tuple(_Part(index[name], p.indices, p.values) for name, p in sorted(rows[i].items())) for i in order
    )
    if columns is None:
        cols = None
        matrix = np.zeros((len(rows), offset), dtype=np.float64)
        for r, parts in enumerate(ordered_parts):
            for p in parts:
                s = slots[p.slot]
                if p.indices is None:
                    matrix[r, s.offset : s.offset + s.size] = p.values
                else:
                    matrix[r, s.offset + p.indices] = p.values.astype(np.float64)
    else:
        cols = _check_columns(columns, offset)
        matrix = np.zeros((len(rows), cols.size), dtype=np.float64)
        bounds = np.searchsorted(cols, [s.offset for s in slots] + [offset])
        for r, parts in enumerate(ordered_parts):
            for p in parts:
                s = slots[p.slot]
                lo, hi = int(bounds[p.slot]), int(bounds[p.slot + 1])
                if hi == lo:
                    continue
                local = cols[lo:hi] - s.offset
                if p.indices is None:
                    matrix[r, lo:hi] = p.values[local]
                else:
                    at = np.searchsorted(local, p.indices)
                    hit = at < local.size
                    hit[hit] = local[at[hit]] == p.indices[hit]
                    matrix[r, lo + at[hit]] = p.values[hit].astype(np.float64)
    ordered = [kept[i] for i in order]
    ints = None
    if all(float(w).is_integer() for w in ordered):
        ints = tuple(int(w) for w in ordered)
    return Batch(
        tuple(slots),
        matrix,
        np.asarray(ordered, dtype=np.float64),
        ints,
        cols,
        ordered_parts if cols is not None else None,
        tuple(given[i] for i in order),
    )


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
