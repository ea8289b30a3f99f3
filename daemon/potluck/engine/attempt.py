"""What one aggregation attempt agrees on (:class:`Attempt`), what a placement hands back
(:class:`Merged`), and what the engine reports (:class:`RoundStatus`).

The loop (engine/loop.py) builds an Attempt once the participants' entries are read; a placement
(allreduce, sliced, gathered) turns it into a Merged or raises :class:`AttemptFailed`; the commit
module (engine/commit.py) signs and stores the Merged.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from potluck.defence import probation
from potluck.manifest import Manifest
from potluck.rounds import fixedpoint
from potluck.rounds.entries import RoundEntry
from potluck.rounds.merging import Excluded, round_seed
from potluck.updates.codec import SignedUpdate

QUORUM_MARGIN_S = 0.5  # time left in an attempt for collecting commit signatures
# commit latency buckets (seconds): an attempt of a toy run takes ~0.2 s, one of a large model minutes
COMMIT_SECONDS_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class AttemptFailed(Exception):
    """This attempt cannot commit (the same way on every honest participant); the next may."""


@dataclass
class Histogram:
    """Observations counted by bucket since the node started, as Prometheus keeps them: ``counts[i]``
    observations at most ``bounds[i]`` (cumulative), so every count only grows."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1


@dataclass
class RoundStatus:
    round: int = -1
    phase: str = "waiting"
    deadline: float = 0.0
    closes_at: float = 0.0  # when the round stops collecting at the latest (its clock bound)
    close_reason: str = ""  # "ready" pacing: why the last round closed
    attempts: int = 0
    failed_attempts: int = 0
    commits: int = 0  # versions taken since start: committed here or caught up to
    version_since: float = 0.0  # when this node took its current version
    last_error: str = ""
    last_participants: list[str] = field(default_factory=list)
    abandoned_rounds: int = 0
    fork_switches: int = 0
    accuracy: float = -1.0  # held-out accuracy of the current version, once evaluated
    audited_slices: int = 0  # other reducers' slices this node recomputed a sample of
    audited_coordinates: int = 0
    convicted: dict[str, tuple[int, str]] = field(default_factory=dict)  # reducer id -> (round, fault id)
    convicted_why: dict[str, str] = field(default_factory=dict)  # reducer id -> what it did (faults.py)
    convictions: Counter[str] = field(default_factory=Counter)  # kind ("wrong_slice", ...) -> reducers
    bad_faults: int = 0  # published faults that did not prove a lie
    bad_faults_by: Counter[str] = field(default_factory=Counter)  # and why each proved nothing
    audited_sums: int = 0  # all-reduce results this node checked against the signed updates
    unaudited_sums: int = 0  # all-reduce sums refused unchecked (some updates not fetched in time)
    placement: str = ""  # where the last attempt's merge ran (rounds/placement.py)
    placement_reason: str = ""  # and why
    damped: dict[str, float] = field(default_factory=dict)  # the last merge: update id -> factor below 1
    probe_excluded: dict[str, str] = field(default_factory=dict)  # the last merge: update id -> reason
    probe_counts: dict[str, int] = field(default_factory=dict)  # updates the probe dropped, by reason
    # the last commit's attempt, phase by phase (seconds): entries, merge, commit (signatures + store)
    last_phases: dict[str, float] = field(default_factory=dict)
    last_merge_s: float = 0.0  # the last commit: from the assignment to the merged version (all-reduce,
    # slices or gathered merge, whichever the strategy uses), before collecting signatures
    # every commit this node merged: seconds from its attempt's start to the commit stored (the sum of
    # its phases); kept here, beside last_phases, so /metrics reads a histogram that only grows
    commit_seconds: Histogram = field(default_factory=lambda: Histogram(COMMIT_SECONDS_BUCKETS))

    def committed(self, phases: dict[str, float]) -> None:
        """An attempt of this node committed, phase by phase (seconds)."""
        self.last_phases = phases
        self.commit_seconds.observe(sum(phases.values()))


@dataclass(frozen=True)
class Attempt:
    """Attempt ``index`` of round ``round`` onto ``version``, as every participant derived it from the
    same signed entries: who takes part, which update each carries, which updates weigh."""

    manifest: Manifest
    round: int
    index: int
    version: str  # V_r, the base every entry names
    state: dict[str, np.ndarray]
    layout: fixedpoint.Layout
    entries: list[RoundEntry]  # sorted by node
    assignment: dict[str, bytes]  # update id -> the participant that carries it
    seniors: frozenset[str]  # updates whose authors are past probation (entries.senior_ids)
    digest: str  # entries.agreement_digest: equal digests, equal assignments
    entered: float  # when this node started the attempt (late alike on every node after an overrun)
    until: float  # when the attempt must have its signatures

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    @property
    def participants(self) -> list[bytes]:
        return [e.node for e in self.entries]

    @property
    def seed(self) -> int:
        return round_seed(self.run_id, self.round)

    def weight(self, update_id: str, sample_count: int) -> int:
        """An update's merge weight in this attempt: 0 while its author is on probation."""
        return probation.update_weight(self.manifest, sample_count, update_id in self.seniors)

    def counted(self, updates: list[SignedUpdate]) -> list[SignedUpdate]:
        """The updates that weigh something (strategies that ignore weights must not see the others)."""
        return [u for u in updates if self.weight(u.update_id, u.update.sample_count) > 0]

    def carried_by(self, node: bytes) -> list[str]:
        return sorted(uid for uid, carrier in self.assignment.items() if carrier == node)


@dataclass(frozen=True)
class Merged:
    """A placement's result: V_{r+1} and what its commit names."""

    state: dict[str, np.ndarray]
    updates: list[str]  # every assigned update, those on probation included
    contributors: list[str]  # node ids of their authors
    participants: list[bytes]
    total_weight: int
    damped: dict[str, float] = field(default_factory=dict)  # update id -> the strategy's factor below 1
    excluded: dict[str, Excluded] = field(default_factory=dict)  # update id -> why the probe dropped it
    record: dict[str, float] = field(default_factory=dict)  # author -> probe record after the round


async def sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def abandoned(r: int, attempts: int, last_error: str, window_s: float, min_attempt_s: float) -> str:
    """What a volunteer reads when round ``r`` commits nothing: its attempts, and why the last one failed."""
    if not attempts:
        return (
            f"round {r} abandoned: its aggregation window ({window_s:.1f} s, the last quarter of the round) "
            f"is shorter than one attempt needs ({min_attempt_s:.1f} s for this model): use longer rounds"
        )
    if not last_error.startswith(f"round {r} "):
        return f"round {r} abandoned: {attempts} attempt(s), none committed before the deadline"
    why = last_error.split(": ", 1)[1]
    return f"round {r} abandoned after {attempts} attempt(s); the last failed: {why}"
