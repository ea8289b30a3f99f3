"""A coordinate strategy inside the averaging: sliced merge, slice audits, reducer convictions.

Participant i reduces slice i of the merged delta and signs it (rounds/slices.py); everyone fetches
the other slices, checks them against their signed Merkle roots, recomputes a random sample of
coordinates of each, and assembles the delta. A reducer caught lying is convicted: the fault (its
signed slice and the coordinate that proves the lie) is published under ``potluck/<run>/faults``,
the reducer is banned for the run and takes no further part; every other participant verifies the
fault against its own copies of the updates before it convicts (:class:`Faults`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from potluck.defence.service import DefenceService
from potluck.engine.attempt import QUORUM_MARGIN_S, Attempt, AttemptFailed, Merged, RoundStatus, round_seed
from potluck.engine.commit import COMMIT_TTL_S
from potluck.engine.conduct import Conduct
from potluck.engine.updates import AcceptedUpdates, wait_for_updates
from potluck.exchange.slices import SliceService, SliceUnavailable
from potluck.identity import NodeIdentity, node_id_of
from potluck.manifest import Manifest
from potluck.merge import next_state
from potluck.rounds import fixedpoint, slices
from potluck.swarm.host import SwarmHost
from potluck.swarm.membership import PeerInfo
from potluck.updates.codec import SignedUpdate

logger = logging.getLogger(__name__)

LYING_REDUCER = "lying_reducer"  # the ban reason of a convicted reducer
MAX_FAULTS_READ = 32  # reducer faults verified per attempt (each costs a signature and a recomputation)


def faults_key(run_id: str) -> str:
    return f"potluck/{run_id}/faults"


def recomputer(
    strategy: Any, manifest: Manifest, layout: fixedpoint.Layout, round_: int, updates: list[SignedUpdate]
) -> slices.Recompute:
    """The strategy (one with ``merge_columns``) at given coordinates of round ``round_``'s merge of
    ``updates``: what a reducer computes for its slice and an auditor for its sample."""
    weights = [float(manifest.update_weight(u.update.sample_count)) for u in updates]
    shapes = {s.name: s.shape for s in layout.slots}
    seed = round_seed(manifest.run_id, round_)

    def recompute(columns: np.ndarray) -> np.ndarray:
        return strategy.merge_columns(updates, weights, round_seed=seed, shapes=shapes, columns=columns)

    return recompute


class Faults:
    """Reducers convicted of a wrong slice: by this node's audits, by faults others published and this
    node verified, or (through the run's persisted bans) before a restart."""

    def __init__(
        self,
        *,
        host: SwarmHost,
        manifest: Manifest,
        layout: fixedpoint.Layout,
        strategy: Any,
        exchange: AcceptedUpdates,
        status: RoundStatus,
        defence: DefenceService | None,
    ):
        self._host, self._manifest, self._layout, self._strategy = host, manifest, layout, strategy
        self._exchange, self._status, self._defence = exchange, status, defence
        self._seen: set[bytes] = set()  # fault subkeys verified, or proven bogus
        for ban in defence.bans.list() if defence is not None else ():
            if ban.reason == LYING_REDUCER:  # convicted before a restart: still out
                status.convicted[node_id_of(ban.node_id)] = (ban.round, ban.evidence_id)
                self._seen.add(bytes.fromhex(ban.evidence_id))

    def excluded(self, node: bytes) -> bool:
        """A convicted participant: its entries are ignored, so it takes no part in any attempt."""
        return node_id_of(node) in self._status.convicted

    def convict(self, fault: slices.ReducerFault, round_: int) -> None:
        reducer, fault_id = fault.header().reducer, fault.id
        node = node_id_of(reducer)
        if node in self._status.convicted:
            return
        self._status.convicted[node] = (round_, fault_id)
        if self._defence is not None:  # a ban for the run: persisted, shown in status and peers
            self._defence.bans.ban(reducer, LYING_REDUCER, round_, fault_id, evidence=fault.to_bytes())
        logger.warning(
            f"reducer {node[:16]} convicted of a wrong slice in round {round_} (fault {fault_id[:12]})"
        )

    async def publish(self, fault: slices.ReducerFault) -> None:
        self.convict(fault, fault.header().round)
        self._seen.add(bytes.fromhex(fault.id))
        await self._host.store(
            faults_key(self._manifest.run_id), bytes.fromhex(fault.id), fault.to_bytes(),
            time.time() + COMMIT_TTL_S,
        )  # fmt: skip

    async def learn(self) -> None:
        """Verify reducer faults other participants published; convict those they prove. A fault is
        checked against our own copies of the updates its reducer merged (until we hold them all, it
        waits); one that proves nothing is counted and ignored."""
        run_id = self._manifest.run_id
        try:
            items = await self._host.get(faults_key(run_id))
        except Exception as e:
            logger.debug(f"reading reducer faults: {e}")
            return
        checked = 0
        for subkey, item in items.items():
            if checked >= MAX_FAULTS_READ:
                break
            if not isinstance(subkey, bytes) or subkey in self._seen:
                continue
            try:
                fault = slices.ReducerFault.from_bytes(item.value)
                header = fault.header()
                if header.run != run_id:
                    raise slices.BadSlice("a fault of another run")
                if any(self._exchange.held_update(uid) is None for uid in header.updates):
                    continue  # cannot check it yet
                checked += 1
                updates = await asyncio.to_thread(
                    lambda h=header: [self._exchange.decoded(u) for u in h.updates]
                )
                recompute = recomputer(self._strategy, self._manifest, self._layout, header.round, updates)
                await asyncio.to_thread(fault.verify, recompute)
            except slices.BadSlice as e:
                self._status.bad_faults += 1
                self._seen.add(subkey)
                logger.info(f"ignoring a reducer fault: {e}")
                continue
            self._seen.add(subkey)
            self.convict(fault, header.round)


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
