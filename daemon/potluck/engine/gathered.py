"""The gathered placement: every participant merges every update of the attempt itself,
deterministically, and the quorum of equal signatures shows that they agree.

The merge itself is rounds/merging.py: the weighted mean (``strategy`` None) sums the sparse updates
straight into potluck's fixed point (the integers and bytes of the all-reduce's result, without
densifying an update); any other strategy merges the updates as its own batch (merge/)."""

from __future__ import annotations

import asyncio

from potluck.engine.attempt import Attempt, Merged
from potluck.engine.updates import AcceptedUpdates, wait_for_updates
from potluck.identity import node_id_of
from potluck.merge import Strategy
from potluck.rounds.merging import merge_round


async def merge_gathered(a: Attempt, exchange: AcceptedUpdates, strategy: Strategy | None) -> Merged:
    ids = sorted(a.assignment)
    updates = await wait_for_updates(exchange, ids, a.until)

    def merge() -> Merged:
        authors = sorted({node_id_of(u.update.author) for u in updates})
        # on probation: weight 0, listed in the commit, not merged
        weighted = [(a.weight(u.update_id, u.update.sample_count), u) for u in updates]
        new_state, total = merge_round(a.state, a.layout, weighted, a.manifest, strategy, a.seed)
        return Merged(new_state, ids, authors, a.participants, total)

    return await asyncio.to_thread(merge)
