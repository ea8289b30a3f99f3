"""Where an attempt's merge runs: the placement rounds/placement.py picks (the manifest's, or under
"auto" the one that moves the fewest bytes, or a dense round's, derived alike everywhere), then the
module that runs it: the gathered updates (engine/gathered.py), per reducer slice (engine/sliced.py;
also the all-reduce's and the dense path's retries), the weighted mean inside hivemind's all-reduce
(engine/allreduce.py) or through potluck's own reduce-scatter (engine/dense.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from potluck.engine.allreduce import AllReduce, load_averager
from potluck.engine.attempt import Attempt, AttemptFailed, Merged, RoundStatus
from potluck.engine.conduct import Conduct
from potluck.engine.dense import DenseMerge
from potluck.engine.faults import Faults
from potluck.engine.gathered import merge_gathered
from potluck.engine.history import RoundHistory
from potluck.engine.sliced import SlicedMerge
from potluck.engine.updates import AcceptedUpdates
from potluck.exchange.dense import DenseService
from potluck.exchange.slices import SliceService
from potluck.identity import NodeIdentity
from potluck.merge.probe import ProbeRule
from potluck.rounds import placement
from potluck.rounds.merging import PROBE_REASONS
from potluck.swarm.host import SwarmHost
from potluck.swarm.membership import PeerInfo

logger = logging.getLogger(__name__)


class Placer:
    def __init__(
        self, *, strategy: Any, column_strategy: Any, mean: bool, sliceable: bool, host: SwarmHost,
        identity: NodeIdentity, exchange: AcceptedUpdates, conduct: Conduct, status: RoundStatus,
        peers: Callable[[], list[PeerInfo]], restore_signals: Callable[[], None], prep_s: float,
        faults: Faults, slice_service: SliceService | None, dense_service: DenseService | None,
        data_dir: Path | None = None, history: RoundHistory | None = None, probe: ProbeRule | None = None,
    ):  # fmt: skip
        self._strategy, self._mean, self._sliceable = strategy, mean, sliceable
        self._probe = probe  # the run's probe rule: every merge gathered, scored first
        self._exchange, self._status = exchange, status
        self._data_dir = data_dir  # the history a revert's step is computed from (gathered only)
        self._history = history  # the merged steps a history-aware strategy needs (gathered only)
        self._allreduce = AllReduce(
            host=host, identity=identity, exchange=exchange, conduct=conduct, status=status,
            restore_signals=restore_signals, prep_s=prep_s,
        )  # fmt: skip
        self._sliced: SlicedMerge | None = None
        if slice_service is not None and sliceable:
            self._sliced = SlicedMerge(
                identity=identity, strategy=column_strategy, exchange=exchange, slice_service=slice_service,
                peers=peers, conduct=conduct, status=status, faults=faults,
            )  # fmt: skip
        self._dense: DenseMerge | None = None
        if dense_service is not None:
            self._dense = DenseMerge(
                identity=identity, exchange=exchange, service=dense_service, peers=peers, conduct=conduct,
                status=status, faults=faults,
            )  # fmt: skip
        self.ran = ""  # the placement the last attempt ran (for its error line)
        self._warming: asyncio.Future | None = None

    def prepare(self, policy: str) -> None:
        """A run that fixes the all-reduce loads its torch and averager now, in a thread, rather than
        in its first attempt (where seconds of imports on a loaded machine could miss the matchmaking)."""
        if policy == "allreduce" and self._warming is None:
            self._warming = asyncio.ensure_future(asyncio.to_thread(load_averager))

    def _report_probe(self, a: Attempt, merged: Merged) -> None:
        """Status and the log: which updates the probe rule dropped and why (counted by reason; an update
        a retry of the same round drops again is counted once)."""
        if self._probe is None:
            return
        last = self._status.probe_excluded
        self._status.probe_excluded = {u: x.reason for u, x in merged.excluded.items()}
        for uid, x in merged.excluded.items():
            if uid not in last:
                self._status.probe_counts[x.reason] = self._status.probe_counts.get(x.reason, 0) + 1
        if not merged.excluded:
            return
        which = ", ".join(
            f"{u[:12]} (score {x.score:.4g} < cut {x.cut:.4g})" for u, x in merged.excluded.items()
        )
        why = "; ".join(
            f"{r}: {PROBE_REASONS[r]}" for r in sorted({x.reason for x in merged.excluded.values()})
        )
        logger.warning(
            f"round {a.round} attempt {a.index}: the probe set excluded {len(merged.excluded)} of "
            f"{len(a.assignment)} updates: {which}. Why: {why}"
        )

    async def merge(self, a: Attempt) -> Merged:
        m = a.manifest
        choice = placement.choose(
            m.placement, mean=self._mean and self._probe is None, coordinate=self._sliceable,
            updates=len(a.assignment),
            participants=len(a.participants), length=a.layout.length, density=m.density, values=m.values,
        )  # fmt: skip
        where, why = choice.placement, choice.reason
        if where in ("allreduce", "dense") and a.index > 0 and self._sliced is not None:
            # the weighted mean's retries run sliced: a reducer that lies is named and excluded, where
            # the all-reduce and the dense path can only refuse a wrong sum (their audits)
            where, why = (
                "sliced",
                f"a retry of the {'all-reduce' if where == 'allreduce' else 'dense merge'}; {why}",
            )

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
            merged = await merge_gathered(
                a, self._exchange, strategy, self._data_dir, self._history, self._probe
            )
            self._report_probe(a, merged)
            self._status.damped = merged.damped
            if merged.damped:  # why an update counts less than the others: the strategy's own factors
                factors = ", ".join(f"{u[:12]} x{f:.3f}" for u, f in sorted(merged.damped.items()))
                name = getattr(strategy, "name", "the strategy")
                logger.info(f"round {a.round} attempt {a.index}: {name} damped {len(merged.damped)} of "
                            f"{len(a.assignment)} updates: {factors}")  # fmt: skip
            return merged
        if where == "dense":
            if self._dense is None:  # every node wires one (node.py); an engine built without it cannot
                raise AttemptFailed("this node has no dense channel (engine built without one)")
            return await self._dense.merge(a)
        return await self._allreduce.merge(a)
