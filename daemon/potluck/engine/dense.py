"""The weighted mean of a dense round: potluck's own reduce-scatter of the fixed-point contributions.

1. each participant turns the updates it carries into its fixed-point contribution (rounds/fixedpoint.py)
   and serves its part of every other participant's range, in the narrowest integer type
   (rounds/dense.py, exchange/dense.py: the direct TCP channel, libp2p where unreachable), while it
   waits for the round's other updates (the audits recompute from them);
2. participant i fetches its range of every contribution, **audits** each at a random sample of
   coordinates (recomputed from that carrier's signed updates: a participant that feeds something else
   is named), sums them exactly in int64 and signs the sum's digest (a slices.SliceHeader whose root is
   rounds/dense.digest of the encoded range) and serves it;
3. everyone fetches the other merged ranges, checks each signature, the header's fields and the digest,
   and audits a random sample of every range against the signed updates, carrier by carrier, as the
   all-reduce's audit does; a wrong sum is refused (the attempt fails) and, where the signed updates
   decide the coordinate, its reducer convicted: the fault (its signed header, the leaf of its range
   holding the wrong value, the Merkle proof: rounds/dense.DenseFault) is published under
   ``potluck/<run>/faults``, every node that checks it bans the reducer (engine/faults.py), and the
   retry (sliced) runs without it;
4. V_{r+1} = V_r + eta * sum / W: the same integers as the canonical all-reduce, so the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

import numpy as np

from potluck.engine.attempt import QUORUM_MARGIN_S, Attempt, AttemptFailed, Merged, RoundStatus
from potluck.engine.conduct import Conduct
from potluck.engine.faults import Faults
from potluck.engine.updates import AcceptedUpdates, wait_for_updates
from potluck.exchange.dense import DenseService, DenseUnavailable, Prepared, prepare, reduce_scatter
from potluck.identity import NodeIdentity, node_id_of, peer_id_of
from potluck.rounds import dense, fixedpoint, slices
from potluck.swarm.membership import PeerInfo

logger = logging.getLogger(__name__)
MAX_FAULT_TRIES = 16  # wrong coordinates of one range tried for a fault the signed updates decide


class DenseMerge:
    def __init__(
        self, *, identity: NodeIdentity, exchange: AcceptedUpdates, service: DenseService,
        peers: Callable[[], list[PeerInfo]], conduct: Conduct, status: RoundStatus, faults: Faults,
    ):  # fmt: skip
        self._identity, self._exchange, self._service = identity, exchange, service
        self._peers, self._conduct, self._status, self._faults = peers, conduct, status, faults

    async def merge(self, a: Attempt) -> Merged:
        listed = sorted(a.assignment)
        participants, me_key = a.participants, self._identity.public_key
        mine = await asyncio.to_thread(lambda: [self._exchange.decoded(u) for u in a.carried_by(me_key)])
        weighted = [(a.weight(u.update_id, u.update.sample_count), u) for u in mine]  # held: our entry
        own = await asyncio.to_thread(self._conduct.contribution, a.layout, weighted)
        if own.clipped:
            logger.warning(f"round {a.round}: {own.clipped} coordinates clipped to the fixed-point range")
        key = dense.attempt_key(a.run_id, a.round, a.index)
        bounds = dense.range_bounds(a.layout.length, len(participants))
        me = participants.index(me_key)
        # our parts offered now: the others can fetch them while we wait for the updates the audits need
        alone = len(participants) == 1
        prepared = None if alone else asyncio.ensure_future(prepare(self._service, key, me, bounds, own.q))
        try:  # the audits recompute from every signed update (the exchange fetches them all anyway)
            updates = {u.update_id: u for u in await wait_for_updates(self._exchange, listed, a.until)}
            ready = None if prepared is None else await prepared
        finally:
            if prepared is not None:
                prepared.cancel()
        contributors = sorted({node_id_of(u.update.author) for u in updates.values()})
        weights = {uid: a.weight(uid, u.update.sample_count) for uid, u in updates.items()}  # probation: 0

        def carried(node: bytes) -> list[tuple[int, object]]:
            return [(weights[uid], updates[uid]) for uid in a.carried_by(node)]

        total_weight = sum(weights.values())
        # a reducer signs the ids of the updates that weigh (probation: 0), so anyone can recompute its
        # sum from them and the manifest's weights alone (a fault's check: engine/faults.py)
        counted = [(weights[uid], updates[uid]) for uid in listed if weights[uid] > 0]
        summed = own.q
        if ready is not None:
            summed = await self._exchange_sums(a, own.q, counted, carried, key, bounds, me, ready)
        new_state = await asyncio.to_thread(
            fixedpoint.next_version, a.state, a.layout, summed, total_weight, a.manifest.outer_lr
        )
        return Merged(new_state, listed, contributors, participants, total_weight)

    async def _exchange_sums(
        self, a: Attempt, q: np.ndarray, counted: list[tuple[int, Any]], carried: Callable[[bytes], list],
        key: bytes, bounds: list[tuple[int, int]], me: int, ready: Prepared,
    ) -> np.ndarray:  # fmt: skip
        participants = a.participants
        ids = [u.update_id for _, u in counted]
        served: dict[int, tuple[bytes, np.ndarray]] = {}  # reducer -> its signed header, its range as served
        addrs = {p.node_id: list(p.record.addrs) for p in self._peers()}
        peers = [
            None if j == me else (peer_id_of(node), addrs.get(node_id_of(node), []))
            for j, node in enumerate(participants)
        ]
        samples = self._conduct.audit_samples

        def sign(lo: int, hi: int, digest: bytes) -> bytes:
            header = slices.SliceHeader(
                a.run_id, a.round, a.index, a.version, a.digest, participants[me], lo, hi, tuple(ids), digest
            )
            return header.sign(self._identity)

        def check_header(j: int, data: bytes, digest: bytes, values: np.ndarray) -> None:
            try:
                h = slices.SliceHeader.verify(data)
            except slices.BadSlice as e:
                raise AttemptFailed(f"range {j}: {e}") from None
            expected = (
                a.run_id,
                a.round,
                a.index,
                a.version,
                a.digest,
                participants[j],
                *bounds[j],
                tuple(ids),
            )
            got = (h.run, h.round, h.attempt, h.parent, h.digest, h.reducer, h.lo, h.hi, h.updates)
            if got != expected or h.root != digest:
                raise AttemptFailed(f"range {j} was signed for another attempt, update set or sum")
            served[j] = (data, values)

        def check_part(j: int, part: np.ndarray) -> None:
            lo, hi = bounds[me]
            columns = _sample(lo, hi, samples)
            expected = fixedpoint.contribution_at(a.layout, carried(participants[j]), columns)
            wrong = np.flatnonzero(part[columns - lo] != expected)
            if wrong.size:
                raise AttemptFailed(
                    f"participant {node_id_of(participants[j])[:16]}'s contribution at coordinate "
                    f"{int(columns[wrong[0]])} is not the sum of the updates it carries"
                )

        try:
            summed = await reduce_scatter(
                self._service, key, me, peers, bounds, q, sign, check_header,
                check_part if samples else None, a.until - QUORUM_MARGIN_S, prepared=ready,
                finish=self._conduct.dense_range,
            )  # fmt: skip
        except DenseUnavailable as e:
            raise AttemptFailed(f"dense exchange: {e}") from None
        wrong = await asyncio.to_thread(self._audit, a, summed, bounds, me, carried, samples)
        if wrong is not None:
            await self._refuse(a, *wrong, bounds, served, counted)
        return summed

    async def _refuse(
        self, a: Attempt, j: int, columns: np.ndarray, bounds: list[tuple[int, int]],
        served: dict[int, tuple[bytes, np.ndarray]], counted: list[tuple[int, Any]],
    ) -> None:  # fmt: skip
        """Reducer j's range is wrong at ``columns``: publish the fault that convicts it (at the first of
        them the signed updates decide) and fail the attempt."""
        signed, values = served[j]
        lo = bounds[j][0]

        def find() -> dense.DenseFault | None:
            for column in columns[:MAX_FAULT_TRIES].tolist():
                right = dense.exact_sum_at(a.layout, counted, column)
                if right is None or right == int(values[column - lo]):
                    continue
                fault = dense.DenseFault.make(signed, values, lo, column)
                with contextlib.suppress(slices.BadSlice):  # checked as every receiver will check it
                    self._faults.check(fault, [u for _, u in counted])
                    return fault
            return None

        fault = await asyncio.to_thread(find)
        node = node_id_of(a.participants[j])[:16]
        why = "a clipped coordinate proves nothing" if fault is None else ""
        if fault is not None and len(fault.to_bytes()) > slices.MAX_FAULT_BYTES:
            why = f"its header names {len(counted)} updates, too many for a DHT value"
        if why:  # refused all the same
            raise AttemptFailed(
                f"reducer {node} signed a wrong sum at coordinate {int(columns[0])}: "
                f"refusing it (no fault: {why})"
            )
        assert fault is not None
        await self._faults.publish(fault)
        raise AttemptFailed(
            f"reducer {node} signed a wrong sum at coordinate {fault.column}: convicted, "
            f"fault {fault.id[:12]} published"
        )

    def _audit(
        self, a: Attempt, summed: np.ndarray, bounds: list[tuple[int, int]], me: int,
        carried: Callable[[bytes], list], samples: int,
    ) -> tuple[int, np.ndarray] | None:  # fmt: skip
        """Recompute ``samples`` coordinates of every other reducer's range from the signed updates,
        carrier by carrier: the first reducer whose range differs, and where (None: none does)."""
        columns = np.concatenate([_sample(lo, hi, samples) for j, (lo, hi) in enumerate(bounds) if j != me])
        expected = np.zeros(columns.size, dtype=np.int64)
        for carrier in sorted(set(a.assignment.values())):
            expected += fixedpoint.contribution_at(a.layout, carried(carrier), columns)
        self._status.audited_sums += 1
        wrong = columns[expected != summed[columns]]
        if not wrong.size:
            return None
        reducer = next(j for j, (lo, hi) in enumerate(bounds) if lo <= wrong[0] < hi)
        lo, hi = bounds[reducer]
        return reducer, wrong[(wrong >= lo) & (wrong < hi)]


def _sample(lo: int, hi: int, samples: int) -> np.ndarray:
    """Sorted coordinates of [lo, hi), ``samples`` of them (all if fewer), drawn with our own randomness."""
    width = hi - lo
    k = min(samples, width)
    rng = np.random.default_rng(secrets.randbits(128))
    offsets = np.sort(rng.choice(width, size=k, replace=False)) if k < width else np.arange(width)
    return (lo + offsets).astype(np.int64)
