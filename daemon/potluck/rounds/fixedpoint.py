"""Canonical aggregation: every participant of an all-reduce ends with the same bytes of V_{r+1}.

hivemind's butterfly all-reduce gives each peer a result that differs in the last bits, and a slice
whose reducer died silently keeps each survivor's own values (shared/HIVEMIND.md). This module makes
the result exact and checked:

1. **Integers.** Each update u (merge weight ``w_u = min(sample_count, weight_cap)``) becomes the
   integer vector ``round(w_u * delta_u / QUANTUM)`` (dense over the :class:`Layout`); a
   participant's contribution ``q`` is the int64 sum over the updates it carries. Quantizing each
   update *before* summing makes the group's integer sum independent of who carries what, so
   :func:`local_average` (one node, all updates) and the group path give bit-identical versions.
2. **Packing.** :func:`pack` writes ``q`` as float64 into rows of ``ROW = 256`` values: 255 data
   values then one sentinel, the participant's random integer ``r_p`` (1 <= r_p < 2**20, announced
   in its gather metadata). The last row is zero-padded. This vector is what the averager averages,
   with **equal weights (``weight=1``), no compression, float64 tensors**.
3. **Exact recovery.** The averaged vector is ``mean_p(x_p)`` up to rounding; :func:`unpack`
   multiplies by the group size n and rounds. Why this is exact, for ``|q| <= BOUND = 2**40`` and
   ``n <= MAX_GROUP = 256``: the reducer's running sum of integer-valued float64 parts stays below
   ``n * 2**40 <= 2**48 < 2**53``, so it is exact; the division by n, the subtraction
   ``avg - x_p`` (|.| <= 2**41) and the peer's ``x_p + delta`` each round once, by at most half an ulp
   of a number <= 2**41: ``2**-12 + 2**-13 + 2**-13 = 2**-11`` in all. Times n <= 2**8 that is at
   most ``2**-3``, plus half an ulp of ``result * n`` (<= 2**48: 2**-5): the error before rounding
   is < 0.16 < 0.25 < 0.5, so ``rint(result * n)`` is the exact integer sum on every peer (the
   simpler bound ``n * ulp(2**40) = 2**8 * 2**-12 = 1/16 < 0.5`` is the same argument per step).
4. **Partial results.** After rounding, every sentinel must equal ``sum_p r_p`` exactly and every
   value must have been within 0.25 of an integer (:class:`PartialResult` otherwise: never commit).
   A slice kept at a survivor's local values shows its own ``r_p`` (< the group's sum, as all
   r_p >= 1) at each sentinel inside the slice. Any contiguous stretch of >= ROW values holds a
   sentinel, so set the averager's ``min_vector_size`` to at least ``ROW``; a lost stretch shorter
   than a row (e.g. the tail of a reducer's span that hivemind sent as a separate part) may hold no
   sentinel, which is why :func:`unpack` also takes the group's :func:`checksum`: a linear, exact
   checksum of the integers (peers announce theirs; the sum's checksum must be their sum). A lost
   stretch escapes both only if the other peers' values in it cancel in the checksum, and if they
   are all zero there, the stretch is correct anyway.
5. **Next version.** :func:`next_version` computes
   ``V_{r+1} = V_r + outer_lr * (S * QUANTUM) / W`` with separate IEEE float64 ufuncs (each
   correctly rounded, no fused ops) and one final cast to each tensor's dtype, so equal integers
   give equal bytes on every node.

QUANTUM = 2**-24 is far below the resolution of int8/fp16 update values; the range is
``BOUND * QUANTUM = 2**16`` per coordinate of a weighted sum (e.g. 64 updates of weight 1000 with
|delta| <= 1). A contribution beyond it is clipped and the count reported
(:attr:`Contribution.clipped`); clipping breaks the partition independence of point 1 for the
clipped coordinates, so the shell should log it (and a run should set ``max_update_norm``).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from potluck.merge.linear import BOUND, QUANTUM
from potluck.rounds.layout import ROW, SPACING, Layout, TensorSlot
from potluck.updates.codec import SignedUpdate, Update

__all__ = [
    "BOUND",
    "MAX_GROUP",
    "MAX_WEIGHT",
    "QUANTUM",
    "ROW",
    "SENTINEL_MAX",
    "SPACING",
    "Contribution",
    "Layout",
    "PartialResult",
    "TensorSlot",
    "checksum",
    "contribution",
    "local_average",
    "new_sentinel",
    "next_version",
    "pack",
    "unpack",
]

_INV_QUANTUM = 2.0**24
MAX_GROUP = 256  # largest group for which recovery is proven exact
MAX_WEIGHT = 1 << 24  # w * float32 value is exact in float64 below 2**29
SENTINEL_MAX = 1 << 20  # sentinels are in [1, SENTINEL_MAX)
_NON_INTEGER = 0.25
_CHUNK_ROWS = 1 << 12  # unpack works on 1M values at a time: 8 MB temporaries stay in reused pages
_CHECKSUM_PERIOD = 7


class PartialResult(Exception):
    """The all-reduce result is partial or corrupt: do not commit this round's result."""


@dataclass(frozen=True)
class Contribution:
    """A participant's quantized weighted sum of the updates it carries."""

    q: np.ndarray  # int64, length layout.length, |q| <= BOUND
    weight: int  # sum of the carried updates' weights
    updates: int  # number of carried updates
    clipped: int  # coordinates clipped to +-BOUND (0 in a healthy run)


def new_sentinel() -> int:
    """A fresh sentinel for one all-reduce, in [1, SENTINEL_MAX), from the OS RNG."""
    return 1 + secrets.randbelow(SENTINEL_MAX - 1)


def contribution(layout: Layout, carried: Iterable[tuple[int, Update | SignedUpdate]]) -> Contribution:
    """``sum_u round(w_u * delta_u / QUANTUM)`` over ``carried`` = [(weight, update)], clipped to +-BOUND.

    Updates are expected to be validated already (shapes, finite values); a violation raises
    ValueError.
    """
    q = np.zeros(layout.length, dtype=np.int64)
    total_weight = count = clipped = 0
    for weight, update in carried:
        if isinstance(update, SignedUpdate):
            update = update.update
        if type(weight) is not int or not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"an update weight is an integer in [0, {MAX_WEIGHT}], got {weight!r}")
        total_weight += weight
        count += 1
        for t in update.tensors:
            try:
                slot = layout.slot(t.name)
            except KeyError:
                raise ValueError(f"update touches {t.name!r}, not an averaged tensor") from None
            if tuple(t.shape) != slot.shape:
                raise ValueError(f"{t.name}: update shape {tuple(t.shape)} != {slot.shape}")
            idx = np.asarray(t.indices, dtype=np.int64)
            if idx.size == 0 or weight == 0:
                continue
            if idx.min() < 0 or idx.max() >= slot.size or np.unique(idx).size != idx.size:
                raise ValueError(f"{t.name}: indices out of range or repeated")
            x, over = _quantized(t.name, t.values, weight)
            clipped += over
            q[slot.offset + idx] += x
    over = np.abs(q) > BOUND
    if over.any():
        clipped += int(over.sum())
        np.clip(q, -BOUND, BOUND, out=q)
    return Contribution(q, total_weight, count, clipped)


def contribution_at(
    layout: Layout, carried: Iterable[tuple[int, Update | SignedUpdate]], columns: np.ndarray
) -> np.ndarray:
    """``contribution(layout, carried).q[columns]`` (sorted unique flat ``columns``), computing only those
    coordinates: what an auditor recomputes of a carrier's share of the all-reduce."""
    columns = np.asarray(columns, dtype=np.int64)
    q = np.zeros(columns.size, dtype=np.int64)
    for weight, update in carried:
        if isinstance(update, SignedUpdate):
            update = update.update
        if weight == 0:
            continue
        for t in update.tensors:
            slot = layout.slot(t.name)
            idx = np.asarray(t.indices, dtype=np.int64) + slot.offset
            if idx.size == 0:
                continue
            order = np.argsort(idx, kind="stable")
            idx = idx[order]
            pos = np.minimum(np.searchsorted(idx, columns), idx.size - 1)
            hit = idx[pos] == columns
            if not hit.any():
                continue
            q[hit] += _quantized(t.name, np.asarray(t.values)[order][pos[hit]], weight)[0]
    np.clip(q, -BOUND, BOUND, out=q)
    return q


def _quantized(name: str, values: np.ndarray, weight: int) -> tuple[np.ndarray, int]:
    """``round(weight·values / 2⁻²⁴)`` clipped to ±BOUND, and how many were clipped: the integers an
    update adds to a contribution (one function, so an auditor's recomputation has the same bits)."""
    x = np.asarray(values).astype(np.float64) * float(weight)  # exact: 24 + 24 bits
    x *= _INV_QUANTUM  # exact: a power of two
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: non-finite values")
    np.rint(x, out=x)
    over = np.abs(x) > BOUND
    clipped = int(over.sum())
    if clipped:
        np.clip(x, -float(BOUND), float(BOUND), out=x)
    return x.astype(np.int64), clipped


def checksum(values: np.ndarray) -> int:
    """An exact linear checksum of an integer vector: ``sum_i (1 + i % 7) * v_i`` as a Python int.

    Linear, so the checksum of the group's sum is the sum of the members' checksums. Valid for
    |v| <= 2**62 and up to 2**32 values (computed as high and low 24-bit halves in int64).
    """
    v = np.asarray(values)
    if v.ndim != 1 or not np.issubdtype(v.dtype, np.integer):
        raise ValueError("checksum takes a 1-D integer vector")
    v = v.astype(np.int64, copy=False)
    total = 0
    for k in range(_CHECKSUM_PERIOD):
        part = v[k::_CHECKSUM_PERIOD]
        high = int(np.sum(part >> 24, dtype=np.int64))
        low = int(np.sum(part & 0xFFFFFF, dtype=np.int64))
        total += (k + 1) * ((high << 24) + low)
    return total


def pack(layout: Layout, contribution_q: np.ndarray, sentinel: int) -> np.ndarray:
    """The float64 vector (length ``layout.packed_length``) this participant gives the averager."""
    q = np.asarray(contribution_q)
    if q.shape != (layout.length,):
        raise ValueError(f"contribution has shape {q.shape}, the layout needs ({layout.length},)")
    if np.issubdtype(q.dtype, np.floating):
        if not np.isfinite(q).all() or not np.array_equal(q, np.rint(q)):
            raise ValueError("a float contribution must hold integers")
    elif not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"contribution dtype {q.dtype} is neither integer nor float")
    if q.size and np.abs(q).max() > BOUND:
        raise ValueError("contribution exceeds +-2**40 (clip it: see contribution())")
    if type(sentinel) is not int or not 1 <= sentinel < SENTINEL_MAX:
        raise ValueError(f"sentinel must be an int in [1, {SENTINEL_MAX}), got {sentinel!r}")
    data = np.zeros(layout.rows * SPACING, dtype=np.float64)
    data[: layout.length] = q
    out = np.empty((layout.rows, ROW), dtype=np.float64)
    out[:, :SPACING] = data.reshape(layout.rows, SPACING)
    out[:, SPACING] = float(sentinel)
    return out.reshape(-1)


def unpack(
    layout: Layout,
    averaged: np.ndarray,
    group_size: int,
    sentinel_sum: int,
    group_checksum: int | None = None,
) -> np.ndarray:
    """The exact int64 sum of the group's contributions from this peer's averaged vector.

    ``group_size`` is the number of peers whose vectors were averaged (equal weights),
    ``sentinel_sum`` the sum of their announced sentinels, ``group_checksum`` (recommended) the sum
    of their announced :func:`checksum` of ``q``. Raises :class:`PartialResult` if the result is not
    a complete, exact average of exactly those vectors; ValueError for a wrong-sized or non-float64
    ``averaged`` (a caller bug).
    """
    a = np.asarray(averaged)
    if a.dtype != np.float64:
        raise ValueError(f"the averaged vector must be float64 (got {a.dtype}): float32 loses the integers")
    if a.shape != (layout.packed_length,):
        raise ValueError(f"averaged has shape {a.shape}, the layout packs ({layout.packed_length},)")
    if type(group_size) is not int or not 1 <= group_size <= MAX_GROUP:
        raise ValueError(f"group size must be in [1, {MAX_GROUP}], got {group_size!r}")
    n = float(group_size)
    limit = float(group_size * BOUND)
    data = np.empty(layout.rows * SPACING, dtype=np.int64)
    rows = a.reshape(layout.rows, ROW)
    for start in range(0, layout.rows, _CHUNK_ROWS):
        x = rows[start : start + _CHUNK_ROWS] * n
        r = np.rint(x)
        with np.errstate(invalid="ignore"):
            error = np.abs(x - r)
        if not np.isfinite(x).all():
            raise PartialResult("the averaged vector holds NaN or infinite values")
        if error.max() > _NON_INTEGER:
            bad = int(np.argmax(error.max(axis=1))) + start
            raise PartialResult(f"non-integer sum in row {bad} (error {error.max():.3g}): partial or corrupt")
        if not (r[:, SPACING] == float(sentinel_sum)).all():
            bad = int(np.argmax(r[:, SPACING] != float(sentinel_sum))) + start
            raise PartialResult(
                f"sentinel of row {bad} is {r[bad - start, SPACING]:.0f}, expected {sentinel_sum}: "
                "a slice was not reduced by the whole group"
            )
        values = r[:, :SPACING]
        if np.abs(values).max() > limit:
            raise PartialResult("a value exceeds group_size * 2**40")
        data[start * SPACING : start * SPACING + values.size] = values.reshape(-1)
    if data[layout.length :].any():
        raise PartialResult("padding is not zero")
    result = data[: layout.length]
    if group_checksum is not None and checksum(result) != group_checksum:
        raise PartialResult("checksum mismatch: part of the vector was not reduced by the whole group")
    return result


def next_version(
    base_state: Mapping[str, np.ndarray],
    layout: Layout,
    summed_q: np.ndarray,
    total_weight: int,
    outer_lr: float,
    extra: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """``V_{r+1} = V_r + outer_lr * (summed_q * QUANTUM) / total_weight``, the same bytes on every node.

    Each float tensor is computed as float64 ``base + ((S * 2**-24) / W) * outer_lr`` (each step one
    IEEE-rounded ufunc) and cast once to its dtype. Passthrough tensors are the same objects as in
    ``base_state``. With ``total_weight == 0`` (no updates) the state is returned unchanged. ``extra``
    (tensor -> flat float64) is added to the step before the base: a revert's step (vcs/revert.py).
    """
    layout.check_state(base_state)
    s = np.asarray(summed_q)
    if s.shape != (layout.length,) or not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"summed_q must be an integer vector of length {layout.length}")
    if type(total_weight) is not int or total_weight < 0:
        raise ValueError(f"total weight must be a non-negative int, got {total_weight!r}")
    if not isinstance(outer_lr, int | float) or not math.isfinite(outer_lr) or outer_lr <= 0:
        raise ValueError(f"outer_lr must be a positive finite number, got {outer_lr!r}")
    if s.size and np.abs(s).max() > MAX_GROUP * BOUND:
        raise ValueError("summed_q exceeds MAX_GROUP * 2**40")
    out = dict(base_state)
    extra = extra or {}
    if total_weight == 0 and s.any():
        raise ValueError("a non-zero sum with zero total weight")
    if total_weight == 0 and not extra:
        return out
    w, lr = float(max(total_weight, 1)), float(outer_lr)
    for slot in layout.slots:
        step = s[slot.offset : slot.offset + slot.size].astype(np.float64)
        step *= QUANTUM
        step /= w
        step *= lr
        if slot.name in extra:
            step += extra[slot.name]
        step += np.asarray(base_state[slot.name], dtype=np.float64).reshape(-1)
        with np.errstate(over="ignore"):
            out[slot.name] = step.astype(slot.dtype).reshape(slot.shape)
    return out


def local_average(
    base_state: Mapping[str, np.ndarray],
    layout: Layout,
    carried: Sequence[tuple[int, Update | SignedUpdate]],
    outer_lr: float,
) -> tuple[dict[str, np.ndarray], Contribution]:
    """The next version from updates merged by one node alone, with no all-reduce.

    Bit-identical to the group path (contributions -> pack -> all-reduce -> unpack -> next_version)
    for the same set of updates, however they were spread over the group (unless clipped).
    """
    c = contribution(layout, carried)
    return next_version(base_state, layout, c.q, c.weight, outer_lr), c
