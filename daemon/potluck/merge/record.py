"""A per-author probe record (issue 15): what each author's updates scored on the probe set in the rounds
merged before, so that an honest update that scores badly once is kept while a repeat offender is
judged by the usual cut (potluck.merge.probe; measured in bench/robust.py, bench/README.md).

The record is part of the agreed history: each commit of a run that keeps one names the record after
its round (rounds/commit.py, signed by the quorum like its version), :func:`next_record` of the record
before it and the round's relative scores. The record before a round onto V_r is that of the commit
that changed the model to V_r (none before the genesis), so a node needs one commit, the one it synced
or made, never a replay. Every step is IEEE products and sums of numbers every node reads alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RECORD_DEFAULTS", "RECORD_GRAIN", "AuthorRecord", "next_record", "record_args", "round_scores"]

RECORD_DEFAULTS: dict[str, Any] = {"record": 0.0, "strict": 1.0}  # record 0: no record (and no keys)
# a record below it in magnitude is dropped: an author who left fades out, and a commit stays bounded
# (relative scores are of order 1; the scores themselves are on a grid of 2**-30)
RECORD_GRAIN = 2.0**-30


def next_record(before: Mapping[str, float], scores: Mapping[str, float], decay: float) -> dict[str, float]:
    """The record after a round: every author's record x ``decay``, plus its relative score in the round
    (:func:`round_scores`; {} for a round the probe did not score), by author, those below
    :data:`RECORD_GRAIN` in magnitude dropped."""
    out = {}
    for author in sorted(set(before) | set(scores)):
        value = decay * before.get(author, 0.0) + scores.get(author, 0.0)
        if abs(value) >= RECORD_GRAIN:
            out[author] = value
    return out


def round_scores(authors: Sequence[str], judged: Mapping[int, float]) -> dict[str, float]:
    """author -> the sum of its updates' relative scores in a round (``probe_keep``'s ``judged``, index
    order: the round's update-id order, alike on every node)."""
    out: dict[str, float] = {}
    for i, a in enumerate(authors):
        out[a] = out.get(a, 0.0) + judged.get(i, 0.0)
    return out


@dataclass
class AuthorRecord:
    """Each author's probe record over the rounds merged so far (:func:`next_record`). An author whose
    record is positive is :meth:`trusted`: :func:`~potluck.merge.probe.probe_keep` judges it by its
    ``strict`` cut. Honest non-IID authors score positive in most rounds and attackers that dilute or
    flip labels negative in most (bench/README.md), so an honest update that scores badly once is kept
    while a repeat offender is judged by the usual cut."""

    decay: float = 0.5
    values: dict[str, float] = field(default_factory=dict)

    def trusted(self, authors: Sequence[str]) -> set[int]:
        """Indices of ``authors`` whose record is positive."""
        return {i for i, a in enumerate(authors) if self.values.get(a, 0.0) > 0.0}

    def add(self, authors: Sequence[str], judged: Mapping[int, float]) -> None:
        """A merged round: ``judged`` (index -> relative score) of the updates by ``authors``."""
        self.values = next_record(self.values, round_scores(authors, judged), self.decay)


def record_args(values: Mapping[str, Any]) -> dict[str, float]:
    """``record`` (the decay, in [0, 1); 0: no record, and the table keeps no record keys, so a run
    without one reads as it did before records) and ``strict`` (a trusted author's cut, in (0, 10]);
    ValueError in one line."""
    decay, strict = values["record"], values["strict"]
    if type(decay) not in (int, float) or not 0 <= decay < 1:
        raise ValueError(f"probe.record must be a number in [0, 1) (the decay; 0: off), got {decay!r}")
    if type(strict) not in (int, float) or not 0 < strict <= 10:
        raise ValueError(f"probe.strict must be a number in (0, 10], got {strict!r}")
    return {"record": float(decay), "strict": float(strict)} if decay > 0 else {}
