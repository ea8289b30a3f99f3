"""One round's merge as a pure function of its base, its updates and their weights (pure).

What the gathered placement computes (engine/gathered.py) and what `potluck verify` recomputes from the
stored updates. The all-reduce and sliced placements give the same bytes: the weighted mean through
potluck's fixed point (rounds/fixedpoint.py), a coordinate strategy through ``merge_columns`` (merge/).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from potluck.manifest import Manifest
from potluck.merge import Strategy, next_state
from potluck.rounds import fixedpoint
from potluck.updates.codec import SignedUpdate

__all__ = ["merge_round", "round_seed"]


def round_seed(run_id: str, round_: int) -> int:
    """The round's seed for randomized strategies (DARE): the same on every node."""
    return int.from_bytes(hashlib.sha256(f"{run_id}/{round_}".encode()).digest()[:8], "little")


def merge_round(
    base: Mapping[str, np.ndarray],
    layout: fixedpoint.Layout,
    weighted: Sequence[tuple[int, SignedUpdate]],
    manifest: Manifest,
    strategy: Strategy | None,
    seed: int,
    extra: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """V_{r+1} and the total weight merged, from V_r and ``weighted`` = [(merge weight, update)].

    ``strategy`` None is the weighted mean: the updates are summed straight into the fixed point (an
    update of weight 0, on probation, adds nothing). Any other strategy merges the updates that weigh
    something as its own batch (strategies that ignore weights must not see the others). ``extra``: a
    revert's float64 step (vcs/revert.py), weighted mean only.
    """
    if strategy is None:
        c = fixedpoint.contribution(layout, weighted)
        new_state = fixedpoint.next_version(dict(base), layout, c.q, c.weight, manifest.outer_lr, extra)
        return new_state, c.weight
    if extra:
        raise ValueError("a revert applies to weighted-mean runs only")
    counted = [(w, u) for w, u in weighted if w > 0]
    merged = (
        strategy.merge([u for _, u in counted], [float(w) for w, _ in counted], round_seed=seed)
        if counted
        else {}
    )
    return next_state(dict(base), merged, manifest.outer_lr), sum(w for w, _ in counted)
