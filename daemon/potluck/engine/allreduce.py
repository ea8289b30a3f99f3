"""The weighted mean inside hivemind's all-reduce, and its audit.

1. each participant turns the updates it carries into one fixed-point contribution (rounds/fixedpoint.py);
2. a fresh averager whose group must be exactly the participants (min_group_size = their number)
   sums them; the gather carries the entry digest, each peer's sentinel and checksum, its carried
   ids, their authors and its weight;
3. check: same digest everywhere, the carried ids are exactly the assignment, every sentinel and
   coordinate recovers an exact integer sum, else the attempt fails;
4. audit: a random sample of the sum, recomputed carrier by carrier from the signed updates, must
   match; a sum that cannot be audited (updates not fetched in time) is refused too;
5. V_{r+1} = V_r + eta * sum / W.
A node alone skips the all-reduce: same integers, same bytes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from potluck.engine.attempt import QUORUM_MARGIN_S, Attempt, AttemptFailed, Merged, RoundStatus
from potluck.engine.conduct import Conduct
from potluck.engine.updates import AcceptedUpdates, wait_for_updates
from potluck.identity import NodeIdentity, node_id_of
from potluck.rounds import fixedpoint
from potluck.swarm.forks import frozen_heap
from potluck.swarm.host import SwarmHost

logger = logging.getLogger(__name__)

MATCHMAKING_S = 1.5  # hivemind forms the group before the scheduled all-reduce
ALLREDUCE_TIMEOUT_S = 20.0


def load_averager() -> None:
    """torch and hivemind's averager, whose imports potluck defers (potluck.lean): a node that never
    runs an all-reduce never loads them (~143 MB). Called in a worker thread, as importing them takes
    seconds on a loaded machine, which on the event loop would stall the node (its matchmaking too).
    The averager child calls ``scipy.optimize.linprog`` (hivemind's load balancing): load it here, in
    the node, so that every averager child inherits it rather than spending ~0.3 s of its all-reduce."""
    import scipy.optimize

    import potluck.engine.averager  # noqa: F401

    scipy.optimize.linprog  # noqa: B018  (the attribute access runs the deferred import)


class AllReduce:
    def __init__(
        self,
        *,
        host: SwarmHost,
        identity: NodeIdentity,
        exchange: AcceptedUpdates,
        conduct: Conduct,
        status: RoundStatus,
        restore_signals: Callable[[], None],
        prep_s: float,
    ):
        self._host, self._identity, self._exchange = host, identity, exchange
        self._conduct, self._status, self._restore_signals = conduct, status, restore_signals
        self._prep_s = prep_s  # after an attempt's start, when the all-reduce starts (the same everywhere)

    async def merge(self, a: Attempt) -> Merged:
        carried = a.carried_by(self._identity.public_key)
        updates = [self._exchange.decoded(uid) for uid in carried]  # held: our entry listed them
        weighted = [(a.weight(u.update_id, u.update.sample_count), u) for u in updates]
        contribution = await asyncio.to_thread(self._conduct.contribution, a.layout, weighted)
        if contribution.clipped:
            logger.warning(
                f"round {a.round}: {contribution.clipped} coordinates clipped to the fixed-point range"
            )
        authors = sorted({node_id_of(u.update.author) for u in updates})
        if len(a.participants) == 1:
            summed, total_weight, contributors = contribution.q, contribution.weight, authors
        else:
            summed, total_weight, contributors = await self._allreduce(a, contribution, carried, authors)
            await self._audit_sum(a, summed)
        new_state = await asyncio.to_thread(
            fixedpoint.next_version, a.state, a.layout, summed, total_weight, a.manifest.outer_lr
        )
        return Merged(new_state, sorted(a.assignment), contributors, a.participants, total_weight)

    async def _allreduce(
        self, a: Attempt, contribution: fixedpoint.Contribution, carried: list[str], authors: list[str]
    ) -> tuple[np.ndarray, int, list[str]]:
        await asyncio.to_thread(load_averager)  # once per process (a run fixing "allreduce": at start)
        import torch

        from potluck.engine.averager import CanonicalAverager, next_power_of_two, shutdown_averager

        sentinel = fixedpoint.new_sentinel()
        packed = await asyncio.to_thread(fixedpoint.pack, a.layout, contribution.q, sentinel)
        participants = a.participants
        n = len(participants)
        averager = CanonicalAverager(
            [torch.from_numpy(packed)],
            self._host.dht,
            start=False,
            prefix=f"potluck_{a.run_id[:16]}_r{a.round}_a{a.index}",
            target_group_size=next_power_of_two(n),
            min_group_size=n,
            min_matchmaking_time=MATCHMAKING_S,
            request_timeout=MATCHMAKING_S / 2,
            allreduce_timeout=ALLREDUCE_TIMEOUT_S,
            allow_state_sharing=False,
            min_vector_size=fixedpoint.ROW,  # every peer's slice holds at least one sentinel
        )
        with frozen_heap():  # the child shares our heap: see potluck.swarm.forks
            averager.run_in_background(await_ready=False)
        self._restore_signals()  # hivemind sets SIGINT to "ignore" in the host process
        try:
            await asyncio.to_thread(averager.wait_until_ready, 10)
            gather = {
                "digest": a.digest,
                "sentinel": sentinel,
                "checksum": str(fixedpoint.checksum(contribution.q)),  # may exceed 64 bits
                "carried": carried,
                "authors": authors,  # node ids of the carried updates' authors: the commit names them all
                "weight": contribution.weight,
                "node": self._identity.public_key,
            }
            try:
                gathered = await asyncio.to_thread(
                    averager.step,
                    gather=gather,
                    scheduled_time=a.entered + self._prep_s,
                    timeout=max(a.until - time.time() - QUORUM_MARGIN_S, MATCHMAKING_S + 0.5),
                    allow_retries=False,
                )
            except TimeoutError:
                raise AttemptFailed(
                    f"the all-reduce timed out ({n} participants, {a.layout.length} coordinates): a peer "
                    "unreachable or too slow, or the dense vector too large to move within the attempt"
                ) from None
            except Exception as e:
                raise AttemptFailed(f"all-reduce failed: {type(e).__name__}: {e}") from None
            if not gathered:
                raise AttemptFailed(f"no all-reduce group of the {n} participants formed in time")
            peers = [checked_gather(p) for p in gathered.values()]
            if sorted(p["node"] for p in peers) != sorted(participants):
                raise AttemptFailed(f"group of {len(peers)} is not the {n} participants")
            if any(p.get("digest") != a.digest for p in peers):
                raise AttemptFailed("participants derived the assignment from different entries")
            carried_all = sorted(uid for p in peers for uid in p["carried"])
            if carried_all != sorted(a.assignment):
                raise AttemptFailed("carried updates differ from the assignment")
            with averager.get_tensors() as tensors:
                averaged = tensors[0].numpy().copy()
            sentinels = sum(int(p["sentinel"]) for p in peers)
            checksums = sum(int(p["checksum"]) for p in peers)
            try:
                summed = await asyncio.to_thread(
                    fixedpoint.unpack, a.layout, averaged, n, sentinels, checksums
                )
            except fixedpoint.PartialResult as e:
                raise AttemptFailed(f"partial all-reduce result: {e}") from None
            contributors = sorted({author for p in peers for author in p["authors"]})
            return summed, sum(int(p["weight"]) for p in peers), contributors
        finally:
            await asyncio.to_thread(shutdown_averager, averager)

    async def _audit_sum(self, a: Attempt, summed: np.ndarray) -> None:
        """Recompute a random sample of the all-reduce's integer sums from the signed updates, carrier by
        carrier, and refuse the result if one differs: a participant that fed the all-reduce something
        other than its carried updates, or a reducer that returned a wrong part, is caught (but not named:
        hivemind's parts are not signed; a sliced strategy names the liar). Needs every update of the
        round, which the exchange fetches anyway (it waits for them while the attempt leaves time to sign).
        Without them the sum is refused too (counted): an update nobody can fetch would let its carrier
        add anything; the retry merges only updates a majority holds."""
        try:
            await wait_for_updates(self._exchange, sorted(a.assignment), a.until)
        except AttemptFailed as e:
            self._status.unaudited_sums += 1
            raise AttemptFailed(f"{e} to audit the all-reduce's sum: refusing to sign it") from None
        carriers = sorted(set(a.assignment.values()))
        samples = self._conduct.audit_samples

        def check() -> int | None:
            length = a.layout.length
            k = min(samples * max(1, len(carriers)), length)
            rng = np.random.default_rng(secrets.randbits(128))
            columns = np.sort(rng.choice(length, size=k, replace=False)).astype(np.int64)
            expected = np.zeros(k, dtype=np.int64)
            for carrier in carriers:
                updates = [self._exchange.decoded(uid) for uid in a.carried_by(carrier)]
                carried = [(a.weight(u.update_id, u.update.sample_count), u) for u in updates]  # probation: 0
                expected += fixedpoint.contribution_at(a.layout, carried, columns)
            wrong = np.flatnonzero(expected != summed[columns])
            return int(columns[wrong[0]]) if wrong.size else None

        column = await asyncio.to_thread(check)
        self._status.audited_sums += 1
        if column is not None:
            raise AttemptFailed(
                f"the all-reduce's sum at coordinate {column} is not the sum of the signed updates: "
                "refusing to sign it"
            )


def checked_gather(data: Any) -> dict[str, Any]:
    """A peer's gather metadata, type-checked: it comes from the network."""
    ok = (
        isinstance(data, dict)
        and isinstance(data.get("digest"), str)
        and type(data.get("sentinel")) is int
        and isinstance(data.get("checksum"), str)
        and len(data["checksum"]) < 40
        and isinstance(data.get("carried"), list)
        and all(isinstance(u, str) for u in data["carried"])
        and type(data.get("weight")) is int
        and data["weight"] >= 0
        and isinstance(data.get("node"), bytes)
    )
    if not ok:
        raise AttemptFailed("a peer sent malformed gather metadata")
    try:
        int(data["checksum"])
    except ValueError:
        raise AttemptFailed("a peer sent a malformed checksum") from None
    return data
