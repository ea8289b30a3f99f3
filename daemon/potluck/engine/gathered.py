"""A whole-vector strategy (robust aggregation): every participant merges every update of the round
itself, deterministically, and the quorum of equal signatures shows that they agree."""

from __future__ import annotations

import asyncio

from potluck.engine.attempt import Attempt, Merged
from potluck.engine.updates import AcceptedUpdates, wait_for_updates
from potluck.identity import node_id_of
from potluck.merge import Strategy, next_state


async def merge_gathered(a: Attempt, exchange: AcceptedUpdates, strategy: Strategy) -> Merged:
    ids = sorted(a.assignment)
    updates = await wait_for_updates(exchange, ids, a.until)

    def merge() -> Merged:
        authors = sorted({node_id_of(u.update.author) for u in updates})
        counted = a.counted(updates)  # on probation: listed in the commit, not merged
        weights = [a.manifest.update_weight(u.update.sample_count) for u in counted]
        merged = strategy.merge(counted, [float(w) for w in weights], round_seed=a.seed) if counted else {}
        new_state = next_state(a.state, merged, a.manifest.outer_lr)
        return Merged(new_state, ids, authors, a.participants, sum(weights))

    return await asyncio.to_thread(merge)
