"""Where an attempt's merge runs (pure): the same choice on every participant, from what they all agree on.

Four placements (engine/gathered.py, engine/sliced.py, engine/allreduce.py, engine/dense.py):

* ``gathered``  every keeper merges every update of the attempt itself;
* ``sliced``    participant i reduces slice i, fetches the others' slices (float64) and audits them;
* ``allreduce`` the weighted mean's fixed-point sums (int64) through hivemind's butterfly all-reduce;
* ``dense``     the weighted mean's fixed-point sums through potluck's own reduce-scatter and
  all-gather, in the narrowest integer type (int32 for a dense update: ``2 * (P-1)/P * L * 4``).

Every keeper fetches every update of the round whatever the placement (the gathered merge needs them,
so do the slice audits and the all-reduce's audit), so the placements differ by what they move on top
of the updates: nothing, the other reducers' slices (``(P-1)/P * L * 8`` bytes received), or the
dense vector twice (reduce-scatter and all-gather, ``2 * (P-1)/P * L * 8``). By bytes, gathered is
therefore never dearer. What it can cost is memory: a strategy other than the weighted mean merges a
dense ``updates x L`` float64 matrix (merge/batch.py), where a reducer of one slice holds ``1/P`` of
it. ``auto`` takes the cheapest placement, in bytes, among those the strategy allows whose working
matrix fits :data:`MAX_MERGE_MATRIX_BYTES`; ties go in the order of :data:`PLACEMENTS`.

A **dense round** (the manifest's ``density`` >= :data:`DENSE_DENSITY`) of the weighted mean among two
or more participants is the exception under ``auto``: it runs ``dense``. Bytes alone would pick
``gathered`` (the updates are fetched anyway), but then every participant quantizes and sums every
dense update itself (U x L coordinates per node, ~2 s per 25M-parameter update on the 2-core box),
where ``dense`` has each quantize only the updates it carries and sum 1/P of the coordinates.

Which placements a strategy allows: the weighted mean all four (its gathered and sliced merges give
the all-reduce's bytes, merge/linear.py), a coordinate strategy ``gathered`` or ``sliced``, a
whole-vector strategy ``gathered`` only. A manifest may fix one (``placement``); it must be allowed.
Parameter groups that pick different strategies make the run's strategy merge.grouped.Grouped, a
vector strategy: gathered only. So is a history-aware strategy (``history_rounds``, rounds/merging.py),
whatever its kind: a reducer of one slice does not have the history it merges with. And so is any merge
of a run that names a probe set: every keeper scores the whole updates (rounds/merging.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from potluck.manifest import PLACEMENTS as POLICIES

__all__ = [
    "DENSE_DENSITY",
    "MAX_MERGE_MATRIX_BYTES",
    "PLACEMENTS",
    "POLICIES",
    "Choice",
    "PlacementError",
    "allowed",
    "check_policy",
    "choose",
    "dense_prep",
    "update_bytes",
]

PLACEMENTS = POLICIES[1:]  # gathered, sliced, allreduce, dense: the order ties go in
DENSE_DENSITY = 0.5  # updates at least this dense make a dense round: auto runs the weighted mean dense
DENSE_VALUE_BYTES = 4  # int32 on the wire: a dense update's fixed-point integers (|q| < 2**31)
MAX_MERGE_MATRIX_BYTES = 2 << 30  # a strategy's float64 matrix per node: above it, auto prefers slices
# per value (int8, sign: one fp32 scale per 256 values)
VALUE_BYTES = {"int8": 1.0 + 4 / 256, "fp16": 2.0, "sign": 1 / 8 + 4 / 256}
ENVELOPE_BYTES = 200  # header, signature, a tensor entry: ~200 bytes whatever the payload


class PlacementError(ValueError):
    """A placement that the run's strategy cannot run in."""


@dataclass(frozen=True)
class Choice:
    placement: str
    reason: str  # one line for the log: the policy, and the bytes per node of each allowed placement
    bytes_per_node: dict[str, int]  # estimated bytes each allowed placement moves to one node


def allowed(mean: bool, coordinate: bool) -> tuple[str, ...]:
    """The placements of a strategy: ``mean`` for the weighted mean, ``coordinate`` for one that can
    merge a window of coordinates (merge.supports_columns) where the node can serve slices."""
    if coordinate:
        return PLACEMENTS if mean else ("gathered", "sliced")
    return ("gathered", "allreduce", "dense") if mean else ("gathered",)


def check_policy(
    policy: str,
    mean: bool,
    coordinate: bool,
    strategy: str = "the strategy",
    history: int = 0,
    probe: bool = False,
) -> None:
    """PlacementError unless ``policy`` is ``auto`` or a placement the strategy allows (``history``: the
    merged steps a history-aware strategy merges with, which only a gathered merge has; ``probe``: the
    run names a probe set, which every keeper scores the gathered updates on)."""
    if policy not in POLICIES:
        raise PlacementError(f"placement must be one of {list(POLICIES)}, got {policy!r}")
    if probe and policy not in ("auto", "gathered"):
        raise PlacementError(
            f"a run with a probe set merges gathered (every keeper scores every update), not {policy}"
        )
    if policy != "auto" and policy not in allowed(mean, coordinate):
        kind = "the weighted mean" if mean else "a coordinate" if coordinate else "a whole-vector"
        if history:
            kind = f"a history-aware (it merges with the last {history} commits' steps)"
        raise PlacementError(
            f"{strategy} is {kind} strategy: it runs {' or '.join(allowed(mean, coordinate))}, not {policy}"
        )


def dense_prep(policy: str, mean: bool, coordinate: bool, density: float = 0.0) -> bool:
    """Whether an attempt of the run may have to prepare a dense vector before it merges (the
    all-reduce's contribution and pack, a reducer's slice, a dense round's contribution), and so needs
    time that grows with the model. Not when every attempt merges gathered: a fixed ``gathered``, a
    whole-vector strategy, or the weighted mean under ``auto`` in a round that is not dense (gathered is
    always allowed to it and never dearer, see :func:`choose`)."""
    if policy == "dense" or (policy == "auto" and mean and density >= DENSE_DENSITY):
        return True
    return not (policy == "gathered" or not coordinate or (policy == "auto" and mean))


def update_bytes(length: int, density: float, values: str) -> int:
    """An update's encoded size, about: the envelope, top-k values and indices in the smallest of
    delta-varint, bitmap and Rice (about log2(1/density) + 1.5 bits an index) (docs/update-format.md)."""
    nnz = math.ceil(density * length)
    gap_bits = max(1, math.ceil(math.log2(1 / density + 1)))
    rice = math.ceil(nnz * (math.log2(1 / density) + 1.5) / 8)
    index_bytes = min(nnz * math.ceil(gap_bits / 7), math.ceil(length / 8), rice)
    return math.ceil(nnz * VALUE_BYTES[values]) + index_bytes + ENVELOPE_BYTES


def choose(
    policy: str,
    *,
    mean: bool,
    coordinate: bool,
    updates: int,
    participants: int,
    length: int,
    density: float,
    values: str,
) -> Choice:
    """The placement of one attempt of ``updates`` updates among ``participants`` over a layout of
    ``length`` coordinates, under the manifest's ``policy``, ``density`` and ``values``."""
    check_policy(policy, mean, coordinate)
    fetched = updates * update_bytes(length, density, values)
    others = (participants - 1) * length * 8 // max(participants, 1)  # float64 / int64 coordinates
    narrow = (participants - 1) * length * DENSE_VALUE_BYTES // max(participants, 1)
    extra = {"gathered": 0, "sliced": others, "allreduce": 2 * others, "dense": 2 * narrow}
    options = allowed(mean, coordinate)
    costs = {p: fetched + extra[p] for p in options}
    summary = ", ".join(f"{p} {_mb(costs[p])}" for p in options)
    if policy != "auto":
        return Choice(policy, f"the manifest fixes {policy} (per node: {summary})", costs)
    if mean and density >= DENSE_DENSITY and participants > 1:
        why = f"auto: dense updates (density {density:g}): each participant quantizes only what it carries"
        return Choice("dense", f"{why} (per node: {summary})", costs)

    def matrix(p: str) -> int:  # the weighted mean merges sparse into one int64 vector: no matrix
        rows = 0 if mean else updates
        return rows * length * 8 // (max(participants, 1) if p == "sliced" else 1)

    fits = [p for p in options if p == "allreduce" or matrix(p) <= MAX_MERGE_MATRIX_BYTES] or list(options)
    best = min(fits, key=lambda p: (costs[p], PLACEMENTS.index(p)))
    limit = _mb(MAX_MERGE_MATRIX_BYTES)
    why = "cheapest" if len(fits) == len(options) else f"cheapest with a merge matrix <= {limit}"
    return Choice(best, f"auto: {why} (per node: {summary})", costs)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
