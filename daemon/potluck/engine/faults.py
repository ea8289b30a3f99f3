"""Reducer faults: the evidence that convicts a reducer of a wrong signed merge, published, verified
and acted on alike by every node.

Two kinds travel under one DHT key, ``potluck/<run>/faults`` (subkey: the fault's sha256):

* a **slice fault** (rounds/slices.ReducerFault): a sliced reducer's signed header, one block of its
  slice's values with a Merkle proof, and a coordinate where the value is not the strategy's
  (engine/sliced.py audits);
* a **dense fault** (rounds/dense.DenseFault): a dense reducer's signed header, one leaf of its merged
  range as it served it with a Merkle proof, and a coordinate where the value is not the exact sum of
  the header's updates (engine/dense.py audits).

Each is checked against this node's own copies of the signed updates its header names (until it holds
them all, it waits); one that proves nothing is counted by reason and ignored, so a false accusation
never bans an honest reducer. A proven one convicts the reducer: a ban for the run (reason
``lying_reducer``, through defence/bans.py: persisted, in ``status`` and ``peers``), and its entries are
ignored from then on, so the next attempt commits without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import numpy as np

from potluck.defence.service import DefenceService
from potluck.engine.attempt import RoundStatus, round_seed
from potluck.engine.commit import COMMIT_TTL_S
from potluck.engine.updates import AcceptedUpdates
from potluck.identity import node_id_of
from potluck.manifest import Manifest
from potluck.rounds import dense, fixedpoint, slices
from potluck.swarm.host import SwarmHost
from potluck.updates.codec import SignedUpdate

logger = logging.getLogger(__name__)

LYING_REDUCER = "lying_reducer"  # the ban reason of a convicted reducer
WRONG_SLICE, WRONG_DENSE_SUM = "wrong_slice", "wrong_dense_sum"  # what it was convicted of (counted)
MAX_FAULTS_READ = 32  # reducer faults verified per attempt (each costs a signature and a recomputation)

Fault = slices.ReducerFault | dense.DenseFault


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


def parse_fault(data: bytes) -> Fault:
    """A fault of either kind from untrusted bytes (by its domain tag); BadSlice otherwise."""
    try:
        return slices.ReducerFault.from_bytes(data)
    except slices.BadSlice as e:
        if e.reason != "malformed":
            raise
    return dense.DenseFault.from_bytes(data)


def header_of(fault: Fault) -> slices.SliceHeader:
    """The accused reducer's signed header (its signature and the fault's proof checked)."""
    return fault.header() if isinstance(fault, slices.ReducerFault) else fault.claimed()[0]


def kind_of(fault: Fault) -> str:
    return WRONG_SLICE if isinstance(fault, slices.ReducerFault) else WRONG_DENSE_SUM


def why(fault: Fault) -> str:
    """What the reducer did, in a volunteer's words."""
    if isinstance(fault, slices.ReducerFault):
        return f"signed a wrong value of its slice at coordinate {fault.column}"
    return f"signed a dense sum that is not the sum of the signed updates at coordinate {fault.column}"


class Faults:
    """Reducers convicted of a wrong signed merge: by this node's audits, by faults others published and
    this node verified, or (through the run's persisted bans) before a restart."""

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
                with contextlib.suppress(slices.BadSlice):
                    status.convicted_why[node_id_of(ban.node_id)] = why(parse_fault(ban.evidence))

    def excluded(self, node: bytes) -> bool:
        """A convicted participant: its entries are ignored, so it takes no part in any attempt."""
        return node_id_of(node) in self._status.convicted

    def convict(self, fault: Fault, round_: int) -> None:
        reducer, fault_id = header_of(fault).reducer, fault.id
        node = node_id_of(reducer)
        if node in self._status.convicted:
            return
        self._status.convicted[node] = (round_, fault_id)
        self._status.convicted_why[node] = why(fault)
        self._status.convictions[kind_of(fault)] += 1
        if self._defence is not None:  # a ban for the run: persisted, shown in status and peers
            self._defence.bans.ban(reducer, LYING_REDUCER, round_, fault_id, evidence=fault.to_bytes())
        logger.warning(
            f"reducer {node[:16]} convicted in round {round_}: it {why(fault)} (fault {fault_id[:12]}); "
            "banned for the run"
        )

    async def publish(self, fault: Fault) -> None:
        self.convict(fault, header_of(fault).round)
        self._seen.add(bytes.fromhex(fault.id))
        await self._host.store(
            faults_key(self._manifest.run_id), bytes.fromhex(fault.id), fault.to_bytes(),
            time.time() + COMMIT_TTL_S,
        )  # fmt: skip

    def check(self, fault: Fault, updates: list[SignedUpdate]) -> slices.SliceHeader:
        """The header of the reducer ``fault`` convicts, checked against ``updates`` (this node's copies of
        those its header names, in its order); BadSlice if it proves nothing."""
        header = header_of(fault)
        if tuple(u.update_id for u in updates) != header.updates:
            raise slices.BadSlice("wrong_updates", "not the updates the reducer signed for")
        if isinstance(fault, slices.ReducerFault):
            recompute = recomputer(self._strategy, self._manifest, self._layout, header.round, updates)
            return fault.verify(recompute)
        if header.hi > self._layout.length:
            raise slices.BadSlice("not_in_range", "a range beyond the model")
        weighted = [(self._manifest.update_weight(u.update.sample_count), u) for u in updates]
        return fault.verify(lambda _, column: dense.exact_sum_at(self._layout, weighted, column))

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
                fault = parse_fault(item.value) if isinstance(item.value, bytes) else None
                if fault is None:
                    raise slices.BadSlice("malformed", "not bytes")
                header = header_of(fault)
                if header.run != run_id:
                    raise slices.BadSlice("wrong_run", "a fault of another run")
                if any(self._exchange.held_update(uid) is None for uid in header.updates):
                    continue  # cannot check it yet
                checked += 1
                updates = await asyncio.to_thread(
                    lambda h=header: [self._exchange.decoded(u) for u in h.updates]
                )
                await asyncio.to_thread(self.check, fault, updates)
            except slices.BadSlice as e:
                self._status.bad_faults += 1
                self._status.bad_faults_by[e.reason] += 1
                self._seen.add(subkey)
                logger.info(f"ignoring a reducer fault that proves nothing: {e}")
                continue
            self._seen.add(subkey)
            self.convict(fault, header.round)
