"""What a history-aware strategy may know beyond the round's deltas (pure).

A single round's updates can be steered by an attacker who keeps its update just under a rule's
threshold. A strategy that also looks at the run's history (where the model moved in the last rounds,
which updates the round agreed on) is harder to steer, but only if every node feeds it the same
bytes: everything here comes from committed versions and the round's agreed entries, never from what
one node happened to see.

A strategy asks for it by setting ``history_rounds`` (how many earlier steps it needs, 0 = none). The
caller (rounds/merging.py, for the live round and for ``potluck verify``) then passes
``context=RoundContext(...)`` to ``merge``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["RoundContext", "entries_digest", "step_between"]


@dataclass(frozen=True)
class RoundContext:
    """The agreed history a strategy may use, the same on every node.

    ``authors``: each delta's author (hex Ed25519 public key), aligned with the deltas passed to ``merge``.
    ``previous``: the merged steps of earlier rounds, newest first, at most the strategy's
    ``history_rounds``: ``(V_r - V_{r-1}) / outer_lr``, ``(V_{r-1} - V_{r-2}) / outer_lr``, ... in float64
    from the stored float32 versions (:func:`step_between`). Shorter near genesis (empty in round 0).
    ``digest``: SHA-256 over the round's update ids in canonical order (:func:`entries_digest`): a seed
    no single contributor chooses (e.g. for bucketing).
    """

    authors: tuple[str, ...]
    previous: tuple[Mapping[str, np.ndarray], ...] = ()
    digest: bytes = b""


def step_between(
    older: Mapping[str, np.ndarray], newer: Mapping[str, np.ndarray], outer_lr: float
) -> dict[str, np.ndarray]:
    """The merged delta that took ``older`` to ``newer``, in the units of a strategy's output."""
    return {
        name: (np.asarray(newer[name], np.float64) - np.asarray(older[name], np.float64)) / float(outer_lr)
        for name in sorted(newer)
        if name in older
    }


def entries_digest(update_ids: Sequence[str]) -> bytes:
    """SHA-256 over the round's update ids (hex), in the order given (the canonical order)."""
    h = hashlib.sha256()
    for uid in update_ids:
        h.update(uid.encode("ascii"))
        h.update(b"\n")
    return h.digest()
