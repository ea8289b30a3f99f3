"""The gathered placement: every participant merges every update of the attempt itself,
deterministically, and the quorum of equal signatures shows that they agree.

The merge itself is rounds/merging.py: the weighted mean (``strategy`` None) sums the sparse updates
straight into potluck's fixed point (the integers and bytes of the all-reduce's result, without
densifying an update); any other strategy merges the updates as its own batch (merge/). A revert among
the updates (an update with ``reverts``, weight 0) adds its step, recomputed from this node's history
(vcs/revert.py), before the round's cast. Only this placement takes reverts: a node accepts one only in
a weighted-mean run that merges gathered (``revert.unsupported``; under ``auto`` such a run always
does, rounds/placement.py). A history-aware strategy merges only here, with the merged steps of the last
commits (engine/history.py), and so does a run with a probe set: the probe rule runs first, inside
``merge_round``, and the updates it drops are in the result (``Merged.excluded``); where it keeps a
per-author record, from the record before the round, and the record after it goes into the result
(``Merged.record``) and so into its commit."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from potluck.engine.attempt import Attempt, AttemptFailed, Merged
from potluck.engine.history import RoundHistory
from potluck.engine.updates import AcceptedUpdates, wait_for_updates
from potluck.errors import ConfigError
from potluck.identity import node_id_of
from potluck.merge import Strategy
from potluck.merge.probe import ProbeRule
from potluck.merge.record import next_record
from potluck.rounds.merging import Excluded, damping, merge_round
from potluck.updates.codec import SignedUpdate
from potluck.vcs import revert
from potluck.vcs.repo import HistoryRepo


def revert_extra(
    data_dir: Path | None, a: Attempt, updates: Sequence[SignedUpdate]
) -> Mapping[str, np.ndarray] | None:
    """The float64 step of the reverts among ``updates`` (None: there are none)."""
    if not any(u.update.reverts for u in updates):
        return None
    if data_dir is None:
        raise AttemptFailed(f"round {a.round}: a revert, and no history here to compute its step from")
    try:
        with HistoryRepo(data_dir, a.manifest) as repo:
            return revert.round_step(repo, updates, a.round, a.layout, a.manifest.outer_lr)
    except ConfigError as e:  # validation checked it: this node's history cannot give the step now
        raise AttemptFailed(f"round {a.round}: {e}") from None


async def merge_gathered(
    a: Attempt,
    exchange: AcceptedUpdates,
    strategy: Strategy | None,
    data_dir: Path | None = None,
    history: RoundHistory | None = None,
    probe: ProbeRule | None = None,
) -> Merged:
    ids = sorted(a.assignment)
    updates = await wait_for_updates(exchange, ids, a.until)
    previous = await history.previous(a) if history is not None else None
    record = None
    if probe is not None and probe.decay > 0:
        if history is None:  # the engine builds one for such a run
            raise AttemptFailed(f"round {a.round}: the probe record needs the history, and none is wired")
        record = await history.record(a)

    def merge() -> Merged:
        authors = sorted({node_id_of(u.update.author) for u in updates})
        # on probation: weight 0, listed in the commit, not merged
        weighted = [(a.weight(u.update_id, u.update.sample_count), u) for u in updates]
        extra = revert_extra(data_dir, a, updates)
        excluded: dict[str, Excluded] = {}
        scores: dict[str, float] = {}
        new_state, total = merge_round(
            a.state, a.layout, weighted, a.manifest, strategy, a.seed, extra, previous, probe, excluded,
            record, scores,
        )  # fmt: skip
        counted = [(0 if u.update_id in excluded else w, u) for w, u in weighted]  # as the strategy saw them
        damped = damping(strategy, counted)
        after = next_record(record, scores, probe.decay) if probe is not None and record is not None else {}
        return Merged(new_state, ids, authors, a.participants, total, damped, excluded, after)

    return await asyncio.to_thread(merge)
