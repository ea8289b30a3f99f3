"""The gathered placement: every participant merges every update of the attempt itself,
deterministically, and the quorum of equal signatures shows that they agree.

The weighted mean (``strategy`` None) sums the sparse updates straight into potluck's fixed point
(rounds/fixedpoint.py: the integers and bytes of the all-reduce's result, without densifying an
update); any other strategy merges the updates as its own batch (merge/)."""

from __future__ import annotations

import asyncio

from potluck.engine.attempt import Attempt, Merged
from potluck.engine.updates import AcceptedUpdates, wait_for_updates
from potluck.identity import node_id_of
from potluck.merge import Strategy, next_state
from potluck.rounds import fixedpoint


async def merge_gathered(a: Attempt, exchange: AcceptedUpdates, strategy: Strategy | None) -> Merged:
    ids = sorted(a.assignment)
    updates = await wait_for_updates(exchange, ids, a.until)

    def merge() -> Merged:
        authors = sorted({node_id_of(u.update.author) for u in updates})
        if strategy is None:  # on probation: weight 0, listed in the commit, not merged
            carried = [(a.weight(u.update_id, u.update.sample_count), u) for u in updates]
            new_state, c = fixedpoint.local_average(a.state, a.layout, carried, a.manifest.outer_lr)
            return Merged(new_state, ids, authors, a.participants, c.weight)
        counted = a.counted(updates)  # on probation: listed in the commit, not merged
        weights = [a.manifest.update_weight(u.update.sample_count) for u in counted]
        merged = strategy.merge(counted, [float(w) for w in weights], round_seed=a.seed) if counted else {}
        new_state = next_state(a.state, merged, a.manifest.outer_lr)
        return Merged(new_state, ids, authors, a.participants, sum(weights))

    return await asyncio.to_thread(merge)
