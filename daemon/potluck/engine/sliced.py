"""A coordinate strategy inside the averaging: sliced merge, slice audits, reducer convictions.

Participant i reduces slice i of the merged delta and signs it (rounds/slices.py); everyone fetches
the other slices, checks them against their signed Merkle roots, recomputes a random sample of
coordinates of each, and assembles the delta. A reducer caught lying is convicted: the fault (its
signed slice and the coordinate that proves the lie) is published under ``potluck/<run>/faults``,
the reducer is banned for the run and takes no further part; every other participant verifies the
fault against its own copies of the updates before it convicts (engine/faults.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from potluck.engine.attempt import QUORUM_MARGIN_S, Attempt, AttemptFailed, Merged, RoundStatus
from potluck.engine.conduct import Conduct
from potluck.engine.faults import Faults, recomputer
from potluck.engine.updates import AcceptedUpdates, wait_for_updates
from potluck.exchange.slices import SliceService, SliceUnavailable
from potluck.identity import NodeIdentity, node_id_of
from potluck.merge import next_state
from potluck.rounds import slices
from potluck.swarm.membership import PeerInfo

logger = logging.getLogger(__name__)


class SlicedMerge:
    def __init__(
        self,
        *,
        identity: NodeIdentity,
        strategy: Any,
        exchange: AcceptedUpdates,
        slice_service: SliceService,
        peers: Callable[[], list[PeerInfo]],
        conduct: Conduct,
        status: RoundStatus,
        faults: Faults,
    ):
        self._identity, self._strategy, self._exchange = identity, strategy, exchange
        self._slices, self._peers, self._conduct = slice_service, peers, conduct
        self._status, self._faults = status, faults

    async def merge(self, a: Attempt) -> Merged:
        listed = sorted(a.assignment)
        updates = await wait_for_updates(self._exchange, listed, a.until)
        contributors = sorted({node_id_of(u.update.author) for u in updates})
        updates = a.counted(updates)  # on probation: listed in the commit, not merged
        if not updates:
            return Merged(dict(a.state), listed, contributors, a.participants, 0)
        recompute = recomputer(self._strategy, a.manifest, a.layout, a.round, updates)
        ids = tuple(u.update_id for u in updates)
        participants = a.participants
        bounds = slices.slice_bounds(a.layout.length, len(participants))
        me = participants.index(self._identity.public_key)
        lo, hi = bounds[me]
        values = await asyncio.to_thread(self._conduct.reduce_slice, recompute, lo, hi)
        mine = slices.SliceHeader(
            a.run_id, a.round, a.index, a.version, a.digest, participants[me], lo, hi, ids,
            slices.merkle_root(values),
        )  # fmt: skip
        self._slices.offer(a.round, a.index, slices.SliceResult.make(mine, self._identity, values).to_bytes())
        addrs = {p.node_id: list(p.record.addrs) for p in self._peers()}
        widest = max(end - begin for begin, end in bounds)

        async def fetch(j: int) -> np.ndarray:
            node = participants[j]
            try:
                data = await self._slices.fetch(
                    node, addrs.get(node_id_of(node), []), a.round, a.index, 8 * widest + (64 << 10),
                    a.until - QUORUM_MARGIN_S,
                )  # fmt: skip
                header, result = slices.SliceResult.from_bytes(data, widest)
            except (SliceUnavailable, slices.BadSlice) as e:
                raise AttemptFailed(f"slice {j}: {e}") from None
            expected = (a.run_id, a.round, a.index, a.version, a.digest, node, *bounds[j], ids)
            got = (header.run, header.round, header.attempt, header.parent, header.digest, header.reducer,
                   header.lo, header.hi, header.updates)  # fmt: skip
            if got != expected:
                raise AttemptFailed(f"slice {j} was signed for another attempt or update set")
            samples = self._conduct.audit_samples
            fault = await asyncio.to_thread(slices.audit, header, result, recompute, samples)
            self._status.audited_slices += 1
            self._status.audited_coordinates += min(samples, header.hi - header.lo)
            if fault is not None:
                await self._faults.publish(fault)
                raise AttemptFailed(
                    f"reducer {node_id_of(node)[:16]} signed a wrong value at coordinate {fault.column}: "
                    f"convicted, fault {fault.id[:12]} published"
                )
            return result.values

        outcomes = await asyncio.gather(
            *(fetch(j) for j in range(len(participants)) if j != me), return_exceptions=True
        )
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:  # report a conviction first: it is the reason that matters
            convicting = [f for f in failures if "convicted" in str(f)]
            raise (convicting or failures)[0]
        parts = list(outcomes)
        parts.insert(me, values)
        flat = np.concatenate(parts) if parts else np.zeros(0)
        touched = {t.name for u in updates for t in u.update.tensors}
        merged = {
            s.name: flat[s.offset : s.offset + s.size].reshape(s.shape)
            for s in a.layout.slots
            if s.name in touched
        }
        new_state = await asyncio.to_thread(next_state, a.state, merged, a.manifest.outer_lr)
        total_weight = sum(a.manifest.update_weight(u.update.sample_count) for u in updates)
        return Merged(new_state, listed, contributors, participants, total_weight)
