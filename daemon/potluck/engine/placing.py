"""Where an attempt's merge runs: the placement rounds/placement.py picks (the manifest's, or under
"auto" the one that moves the fewest bytes, derived alike everywhere), then the module that runs it:
the gathered updates (engine/gathered.py), per reducer slice (engine/sliced.py; also the all-reduce's
retries), or the weighted mean inside hivemind's all-reduce (engine/allreduce.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from potluck.engine.allreduce import AllReduce
from potluck.engine.attempt import Attempt, Merged, RoundStatus
from potluck.engine.gathered import merge_gathered
from potluck.engine.history import RoundHistory
from potluck.engine.sliced import SlicedMerge
from potluck.engine.updates import AcceptedUpdates
from potluck.rounds import placement

logger = logging.getLogger(__name__)


class Placer:
    def __init__(
        self, *, strategy: Any, mean: bool, sliceable: bool, exchange: AcceptedUpdates, allreduce: AllReduce,
        sliced: SlicedMerge | None, status: RoundStatus, data_dir: Path | None = None,
        history: RoundHistory | None = None,
    ):  # fmt: skip
        self._strategy, self._mean, self._sliceable = strategy, mean, sliceable
        self._exchange, self._allreduce, self._sliced, self._status = exchange, allreduce, sliced, status
        self._data_dir = data_dir  # the history a revert's step is computed from (gathered only)
        self._history = history  # the merged steps a history-aware strategy needs (gathered only)
        self.ran = ""  # the placement the last attempt ran (for its error line)

    async def merge(self, a: Attempt) -> Merged:
        m = a.manifest
        choice = placement.choose(
            m.placement, mean=self._mean, coordinate=self._sliceable, updates=len(a.assignment),
            participants=len(a.participants), length=a.layout.length, density=m.density, values=m.values,
        )  # fmt: skip
        where, why = choice.placement, choice.reason
        if where == "allreduce" and a.index > 0 and self._sliced is not None:
            # the weighted mean's retries run sliced: the same bytes, but a reducer that lies is named
            # and excluded, where the all-reduce can only refuse a wrong sum (allreduce.py's audit)
            where, why = "sliced", f"a retry of the all-reduce; {why}"
        self._status.placement, self._status.placement_reason = where, why
        self.ran = where
        logger.info(
            f"round {a.round} attempt {a.index}: {where} merge of {len(a.assignment)} updates among "
            f"{len(a.participants)} participants: {why}"
        )
        if where == "sliced":
            assert self._sliced is not None  # check_policy/choose allow sliced only with one
            return await self._sliced.merge(a)
        if where == "gathered":
            strategy = None if self._mean else self._strategy
            merged = await merge_gathered(a, self._exchange, strategy, self._data_dir, self._history)
            self._status.damped = merged.damped
            if merged.damped:  # why an update counts less than the others: the strategy's own factors
                factors = ", ".join(f"{u[:12]} x{f:.3f}" for u, f in sorted(merged.damped.items()))
                name = getattr(strategy, "name", "the strategy")
                logger.info(f"round {a.round} attempt {a.index}: {name} damped {len(merged.damped)} of "
                            f"{len(a.assignment)} updates: {factors}")  # fmt: skip
            return merged
        return await self._allreduce.merge(a)
