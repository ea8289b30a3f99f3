"""The round schedule, derived by every node alone from the manifest and its clock.

Two pacings (the manifest's ``pacing``):

* "clock": the fixed grid below; every round lasts ``round_seconds`` whatever its work.
* "ready": round r opens as soon as V_r is committed and stops collecting as soon as what it waits
  for is in (engine/closing.py decides it from signed declarations and entries); then come its
  attempts, in an aggregation window as long as the clock's. ``round_seconds`` is only the upper
  bound: a round closes at the latest :func:`collecting_seconds` after it opened (or after its first
  update). Round numbers follow the commits: round r + 1 is the one after V_{r+1}, never skipped.

Under "clock" pacing:

Round ``r >= 0`` spans ``[start_time + r * round_seconds, start_time + (r + 1) * round_seconds)``;
its deadline is the start of round ``r + 1``. Within a round:

* "collecting": from the round's start until ``deadline - AGGREGATION_FRACTION * round_seconds``:
  contributors publish updates against V_r, keepers fetch and validate them;
* "aggregating": the last ``AGGREGATION_FRACTION`` of the round: the pool is frozen, participants
  form a group, all-reduce, compute V_{r+1} and sign the commit. V_{r+1} is the base of round r + 1.

Before ``start_time`` the phase is "waiting" and :func:`round_at` returns -1.

The margin is a fixed fraction (not a manifest field) so that every run gets the same shape and a
manifest cannot make it zero; a quarter of the round leaves 15 s of a 60 s round for matchmaking
(hivemind's ``min_matchmaking_time`` defaults to 5 s) and the all-reduce. Clocks across nodes are
assumed within a few seconds of each other; the margin absorbs that skew too.

Boundaries are exact: ``round_at(m, round_start(m, r)) == r`` for every r, even where
``(t - start) / round_seconds`` rounds the other way in floating point.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

from potluck.manifest import Manifest

__all__ = [
    "AGGREGATION_FRACTION",
    "Phase",
    "Position",
    "aggregation_seconds",
    "aggregation_start",
    "collecting_seconds",
    "deadline",
    "phase_at",
    "position",
    "round_at",
    "round_start",
]

AGGREGATION_FRACTION = 0.25

Phase = Literal["waiting", "collecting", "aggregating"]


def collecting_seconds(manifest: Manifest) -> float:
    """How long a round collects at most: all of it but the aggregation window."""
    return (1 - AGGREGATION_FRACTION) * manifest.round_seconds


def aggregation_seconds(manifest: Manifest) -> float:
    """How long a round's attempts may take after it stops collecting."""
    return AGGREGATION_FRACTION * manifest.round_seconds


def round_start(manifest: Manifest, r: int) -> float:
    """When round ``r`` starts (unix seconds)."""
    if r < 0:
        raise ValueError(f"rounds are numbered from 0, got {r}")
    return manifest.start_time + r * manifest.round_seconds


def deadline(manifest: Manifest, r: int) -> float:
    """When round ``r`` ends: the start of round ``r + 1``."""
    return round_start(manifest, r + 1)


def aggregation_start(manifest: Manifest, r: int) -> float:
    """When round ``r`` stops collecting and starts aggregating."""
    return deadline(manifest, r) - AGGREGATION_FRACTION * manifest.round_seconds


def round_at(manifest: Manifest, t: float) -> int:
    """The round in progress at time ``t``; -1 before ``start_time``."""
    if not math.isfinite(t):
        raise ValueError(f"time must be finite, got {t}")
    if t < manifest.start_time:
        return -1
    r = max(0, math.floor((t - manifest.start_time) / manifest.round_seconds))
    # make the answer agree with round_start's own floating-point arithmetic at the boundaries
    while r > 0 and round_start(manifest, r) > t:
        r -= 1
    while round_start(manifest, r + 1) <= t:
        r += 1
    return r


def phase_at(manifest: Manifest, t: float) -> Phase:
    r = round_at(manifest, t)
    if r < 0:
        return "waiting"
    return "collecting" if t < aggregation_start(manifest, r) else "aggregating"


class Position(NamedTuple):
    """Where time ``t`` falls: the round, its phase and seconds until the phase ends."""

    round: int
    phase: Phase
    phase_ends: float  # unix seconds at which this phase ends

    def seconds_left(self, t: float) -> float:
        return max(0.0, self.phase_ends - t)


def position(manifest: Manifest, t: float) -> Position:
    r = round_at(manifest, t)
    if r < 0:
        return Position(-1, "waiting", manifest.start_time)
    if t < aggregation_start(manifest, r):
        return Position(r, "collecting", aggregation_start(manifest, r))
    return Position(r, "aggregating", deadline(manifest, r))
