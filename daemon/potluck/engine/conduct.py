"""How this node acts as a participant: the engine's seam for adversaries.

A :class:`Conduct` decides the things a participant could lie about: which updates its round entry
lists, what it feeds the all-reduce for the updates it carries, the slice or dense range it signs as a
reducer, and how many coordinates of every other reducer's work it recomputes. The shipped node is
honest: :class:`RoundEngine` is built with ``conduct=None``, which takes :func:`current` (an honest
``Conduct()`` unless a test installed another).

A hostile peer for tests subclasses Conduct, overrides one method, and either passes an instance to
``RoundEngine(conduct=...)`` or, to run the real CLI with it (``python -m tests.engine.lying_carrier
run ...``), calls :func:`install` before ``potluck.cli.main``. The defences must catch every such
conduct: the attack tests fail when one breaks.
"""

from __future__ import annotations

import numpy as np

from potluck.rounds import fixedpoint, slices
from potluck.updates.codec import SignedUpdate

AUDIT_SAMPLES = 256  # coordinates of every other reducer's slice (and per carrier of a sum) recomputed


class Conduct:
    """An honest participant. Subclass and override to make an adversary (tests only)."""

    audit_samples: int = AUDIT_SAMPLES

    def entry_ids(self, round_: int, held: list[str]) -> list[str]:
        """The update ids this node's round entry lists: the round's updates it holds (sorted)."""
        return held

    def contribution(
        self, layout: fixedpoint.Layout, carried: list[tuple[int, SignedUpdate]]
    ) -> fixedpoint.Contribution:
        """What this node feeds the all-reduce for its carried updates, as [(weight, update)]."""
        return fixedpoint.contribution(layout, carried)

    def reduce_slice(self, recompute: slices.Recompute, lo: int, hi: int) -> np.ndarray:
        """This node's slice [lo, hi) of the merged delta, which it signs as the slice's reducer."""
        return np.asarray(recompute(np.arange(lo, hi, dtype=np.int64)), dtype=np.float64)

    def dense_range(self, summed: np.ndarray) -> np.ndarray:
        """This node's merged range of a dense round (the exact int64 sum of its range of every
        contribution), as it signs and serves it as the range's reducer."""
        return summed


_current = Conduct()


def install(conduct: Conduct) -> None:
    """Make ``conduct`` the one every RoundEngine built afterwards in this process uses (tests only)."""
    global _current
    _current = conduct


def current() -> Conduct:
    return _current
