"""The round engine: every round, the run's keepers turn the round's accepted updates into one
agreed, signed, content-addressed version.

Per round r (times from rounds/schedule.py, derived from the manifest alone):

collecting    updates against V_r are validated and held by the exchange.
aggregating   for attempt a = 0, 1, ... while the round's aggregation window lasts:
  1. freeze: publish a signed entry (held update ids) under the (round, attempt) key;
  2. after ENTRY_WINDOW_S read every entry: the participants; derive the same assignment as
     everyone else (each update carried by exactly one holder, rounds/entries.py);
  3. all-reduce the fixed-point contributions with a fresh averager whose group must be exactly
     the participants (min_group_size = their number); the gather carries the entry digest, each
     peer's sentinel, its carried ids and weight;
  4. check: same digest everywhere, the carried ids are exactly the assignment, every sentinel and
     coordinate recovers an exact integer sum (rounds/fixedpoint.py) -> else abandon the attempt;
  5. V_{r+1} = V_r + eta * sum / W, hash it, sign the commit, publish the signature, wait for the
     manifest's quorum of signatures on the same commit, then store the version and the history row.
A node alone skips the all-reduce: same integers, same bytes. A round without updates commits
nothing (V_{r+1} = V_r).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from potluck.defence import probation
from potluck.defence.service import DefenceError, DefenceService
from potluck.exchange.service import UpdateExchange
from potluck.exchange.slices import SliceService, SliceUnavailable
from potluck.exchange.state import StateService
from potluck.hashing import tensor_hashes, version_hash
from potluck.identity import NodeIdentity, node_id_of
from potluck.manifest import Manifest
from potluck.merge import DEFAULT_STRATEGY, get_strategy, next_state, supports_columns
from potluck.rounds import fixedpoint, schedule, slices
from potluck.engine.averager import CanonicalAverager, next_power_of_two
from potluck.rounds.commit import Commit, CommitError, CommitSignature, QuorumTracker, sign_commit
from potluck.rounds.entries import (
    BadEntry,
    RoundEntry,
    agreement_digest,
    assign,
    entries_key,
    retry_holders,
    senior_ids,
)
from potluck.store.history import History
from potluck.store.versions import VersionStore
from potluck.swarm.host import SwarmHost
from potluck.swarm.membership import LocalState, PeerInfo
from potluck.tasks import TrainableTask
from potluck.updates.codec import SignedUpdate, decode_update
from potluck.v1 import control_pb2
from potluck.wire import WireError, pack_pair, unpack_pair

logger = logging.getLogger(__name__)

ENTRY_WINDOW_S = 1.0  # participants publish entries, then everyone reads the same set
ENTRY_GRACE_S = 0.4  # re-reads while live peers' entries are missing
MATCHMAKING_S = 1.5  # hivemind forms the group before the scheduled all-reduce
PREP_PARAMS_PER_S = 4e6  # contribution + pack speed measured on 2 cores: large models need longer to prepare
ALLREDUCE_TIMEOUT_S = 20.0
MIN_ATTEMPT_S = 3.5  # entries (1 s) + matchmaking (1.5 s) + all-reduce and signatures of a small model
QUORUM_MARGIN_S = 0.5  # time left in an attempt for collecting commit signatures
MAX_SIGNED_COMMIT_BYTES = 14 << 10
COMMIT_TTL_S = 24 * 3600.0
CATCH_UP_PERIOD_S = 2.0
AUDIT_SAMPLES = 256  # coordinates of every other reducer's slice each participant recomputes
LYING_REDUCER = "lying_reducer"  # the ban reason of a convicted reducer
MAX_FAULTS_READ = 32  # reducer faults verified per attempt (each costs a signature and a recomputation)


def signed_commit_bytes(commit: Commit, signature: CommitSignature) -> bytes:
    """What a participant stores in the DHT: the commit body and its signature of it (small models:
    a body with a few hundred tensor hashes stays far below hivemind's 15 KB value hazard)."""
    return pack_pair(commit.to_bytes(), signature.to_bytes(commit.id))


def parse_signed_commit(data: bytes) -> tuple[Commit, CommitSignature]:
    try:
        body, signature = unpack_pair(data, MAX_SIGNED_COMMIT_BYTES)
    except WireError as e:
        raise CommitError(f"not a signed commit: {e}") from None
    commit = Commit.from_bytes(body)
    cid, sig = CommitSignature.from_bytes(signature)
    if cid != commit.id:
        raise CommitError("the signature is for another commit")
    return commit, sig


def commits_key(run_id: str, round_: int) -> str:
    return f"potluck/{run_id}/commits/{round_}"


def faults_key(run_id: str) -> str:
    return f"potluck/{run_id}/faults"


class AttemptFailed(Exception):
    pass


@dataclass
class RoundStatus:
    round: int = -1
    phase: str = "waiting"
    deadline: float = 0.0
    attempts: int = 0
    last_error: str = ""
    last_participants: list[str] = field(default_factory=list)
    abandoned_rounds: int = 0
    fork_switches: int = 0
    accuracy: float = -1.0  # held-out accuracy of the current version, once evaluated
    audited_slices: int = 0  # other reducers' slices this node recomputed a sample of
    audited_coordinates: int = 0
    convicted: dict[str, tuple[int, str]] = field(default_factory=dict)  # reducer id -> (round, fault id)
    bad_faults: int = 0  # published faults that did not prove a lie
    audited_sums: int = 0  # all-reduce results this node checked against the signed updates
    unaudited_sums: int = 0  # all-reduce sums refused unchecked (some updates not fetched in time)
    last_merge_s: float = 0.0  # the last commit: from the assignment to the merged version (all-reduce,
    # slices or gathered merge, whichever the strategy uses), before collecting signatures


class RoundEngine:
    def __init__(
        self,
        *,
        host: SwarmHost,
        identity: NodeIdentity,
        manifest: Manifest,
        versions: VersionStore,
        history: History,
        exchange: UpdateExchange,
        local: LocalState,
        state_service: StateService,
        peers: Callable[[], list[PeerInfo]],
        on_new_version: Callable[[], None],
        restore_signals: Callable[[], None],
        task: TrainableTask | None = None,
        aggregates: bool = True,
        slice_service: SliceService | None = None,
        defence: DefenceService | None = None,
    ):
        self._host, self._identity, self.manifest = host, identity, manifest
        self.run_id = manifest.run_id
        self._versions, self._history, self._exchange = versions, history, exchange
        self._local, self._on_new_version, self._restore_signals = local, on_new_version, restore_signals
        self._state, self._peers = state_service, peers
        self._task = task
        # a client-mode node only follows: nobody can dial it for the all-reduce
        self._aggregates = aggregates
        # the default weighted mean runs inside the all-reduce; other strategies where updates are gathered
        self._strategy = (
            None
            if manifest.strategy == DEFAULT_STRATEGY
            else get_strategy(manifest.strategy, manifest.strategy_args)
        )
        # coordinate strategies run sliced: each participant reduces one slice, the others audit it
        self._slices = slice_service
        self._sliced = (
            self._strategy is not None and slice_service is not None and supports_columns(self._strategy)
        )
        # what a sliced attempt merges with: the run's strategy, or (for the all-reduce's retries) the
        # weighted mean, whose slices have the bytes of the all-reduce's result
        self._column_strategy = self._strategy if self._sliced else get_strategy(DEFAULT_STRATEGY, {})
        self._defence = defence  # bans and probation ride on the round entries (see _entry_extras)
        self._seniors: set[str] = set()  # this attempt's updates past probation (entries.senior_ids)
        self._faults_seen: set[bytes] = set()  # fault subkeys verified, or proven bogus
        self._merge_started = 0.0
        self._evaluation: asyncio.Task | None = None
        self.status = RoundStatus()
        for ban in defence.bans.list() if defence is not None else ():
            if ban.reason == LYING_REDUCER:  # convicted before a restart: still out
                self.status.convicted[node_id_of(ban.node_id)] = (ban.round, ban.evidence_id)
                self._faults_seen.add(bytes.fromhex(ban.evidence_id))
        self._loop_task: asyncio.Task | None = None
        latest = history.latest()
        self.version = latest.version if latest is not None else manifest.genesis
        self.committed_round = latest.round if latest is not None else -1
        self.state = versions.get(self.version)
        self.layout = fixedpoint.Layout.from_state(self.state)
        # same on every node (same layout): when the all-reduce starts after an attempt's start
        self.prep_s = ENTRY_WINDOW_S + ENTRY_GRACE_S + MATCHMAKING_S + self.layout.length / PREP_PARAMS_PER_S

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._publish_version()
        self._loop_task = asyncio.create_task(self._run_forever(), name="round-engine")

    async def stop(self) -> None:
        for task in (self._loop_task, self._evaluation):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def adopt(self, commit: Commit, state: dict[str, np.ndarray]) -> None:
        """Take a version committed elsewhere (a late joiner's sync): it becomes our V."""
        self.version, self.state, self.committed_round = commit.version, state, commit.round
        self._publish_version()

    def _evaluate_soon(self) -> None:
        """Score the current version on the task's held-out split, off the loop (one at a time)."""
        if self._task is None or (self._evaluation is not None and not self._evaluation.done()):
            return
        version, state, round_ = self.version, self.state, self.committed_round

        async def evaluate() -> None:
            try:
                accuracy = float(await asyncio.to_thread(self._task.evaluate, state))
            except Exception as e:  # a task bug must not take the node down
                logger.warning(f"evaluating {version[:12]} failed: {type(e).__name__}: {e}")
                return
            if round_ >= 0:
                await asyncio.to_thread(self._history.set_accuracy, round_, accuracy)
            if self.version == version:
                self.status.accuracy = accuracy
            logger.info(f"version {version[:12]} (round {round_}): held-out accuracy {accuracy:.4f}")
            if self.version != version:
                self._evaluate_soon()  # a newer version arrived meanwhile

        self._evaluation = asyncio.create_task(evaluate(), name="evaluate")

    def _publish_version(self) -> None:
        """Tell the exchange and our peer record which version updates must be based on."""
        self.status.accuracy = -1.0
        self._evaluate_soon()
        self._local.model_version = self.version
        self._local.round = max(self.committed_round + 1, 0)
        round_ = max(self.status.round, self.committed_round + 1, 0)
        self._exchange.set_context(round=round_, known_bases=frozenset({self.version}))
        self._on_new_version()

    # ---- the loop ----------------------------------------------------------------------------------

    async def _run_forever(self) -> None:
        m = self.manifest
        while True:
            try:
                await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.status.last_error = f"catching up: {type(e).__name__}: {e}"
                logger.warning(self.status.last_error)
            now = time.time()
            r = schedule.round_at(m, now)
            if r < 0:
                self.status.phase = "waiting"
                await asyncio.sleep(min(1.0, m.start_time - now))
                continue
            self.status.round, self.status.deadline = r, schedule.deadline(m, r)
            self._exchange.set_context(
                round=max(r, self.committed_round + 1), known_bases=frozenset({self.version})
            )
            if self.committed_round >= r:  # V_{r+1} is already here (synced, or committed)
                self.status.phase = "committed"
                await _sleep_until(min(schedule.deadline(m, r), now + CATCH_UP_PERIOD_S))
                continue
            agg_start = schedule.aggregation_start(m, r)
            if now < agg_start:
                self.status.phase = "collecting"
                await _sleep_until(min(agg_start, now + CATCH_UP_PERIOD_S))
                continue
            if not self._aggregates:
                self.status.phase = "following"  # the keepers aggregate; we catch up to their commit
                await _sleep_until(min(schedule.deadline(m, r), time.time() + CATCH_UP_PERIOD_S))
                continue
            self.status.phase = "aggregating"
            await self._aggregate_round(r)
            await _sleep_until(schedule.deadline(m, r))

    async def _aggregate_round(self, r: int) -> None:
        m = self.manifest
        end = schedule.deadline(m, r)
        min_attempt = MIN_ATTEMPT_S + self.layout.length / PREP_PARAMS_PER_S
        attempt_s = max(min_attempt, (end - schedule.aggregation_start(m, r)) / 3)
        attempt = 0
        while True:
            start = schedule.aggregation_start(m, r) + attempt * attempt_s
            if start + min_attempt > end:
                break
            await _sleep_until(start)
            self.status.attempts += 1
            try:
                last = start + attempt_s + min_attempt > end  # no retry fits: this one may use the whole rest
                done = await self._attempt(r, attempt, start, end if last else start + attempt_s)
                if done:
                    return
            except AttemptFailed as e:
                self.status.last_error = f"round {r} attempt {attempt}: {e}"
                logger.warning(self.status.last_error)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug in one attempt must not end the node
                self.status.last_error = f"round {r} attempt {attempt}: {type(e).__name__}: {e}"
                logger.exception(self.status.last_error)
            attempt += 1
        self.status.abandoned_rounds += 1
        logger.warning(f"round {r} abandoned: no attempt committed before the deadline")

    async def _attempt(self, r: int, attempt: int, start: float, until: float) -> bool:
        """One aggregation attempt; True when round r is settled (committed, or nothing to commit)."""
        # a previous attempt that overran (hivemind's matchmaking can outlast its timeout) makes every
        # participant late alike: each then gives the entries a whole window from its own late start
        entered = max(start, time.time())
        held = self._held_ids(r)
        mine = RoundEntry(
            self.run_id, r, attempt, self.version, self._identity.public_key, tuple(held),
            **self._entry_extras(r, held),
        )  # fmt: skip
        key = entries_key(self.run_id, r, attempt)
        await self._host.store(key, self._identity.public_key, mine.sign(self._identity), start + 3600)
        # while the entries gather: learn of convicted reducers, so that none takes part (bounded: a slow
        # DHT must not make this node late for the entries)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._learn_faults(), max(0.0, entered + ENTRY_WINDOW_S - time.time()))
        await _sleep_until(entered + ENTRY_WINDOW_S)
        expected = 1 + sum(
            p.record.model_version == self.version
            and p.record.role != "client"
            and not self._excluded(bytes.fromhex(p.node_id))
            for p in self._peers()
        )
        entries = await self._read_entries(key, r, attempt)
        while len(entries) < expected and time.time() < entered + ENTRY_WINDOW_S + ENTRY_GRACE_S:
            await asyncio.sleep(0.1)  # a slow DHT under load: every participant waits for the same set
            entries = await self._read_entries(key, r, attempt)
        if self._identity.public_key not in {e.node for e in entries}:
            entries.append(mine)  # our own store may not be visible yet; we know what we said
        entries.sort(key=lambda e: e.node)
        await self._check_defences(entries, entered)
        # without the updates any entry excludes (banned authors); a retry merges only updates that a
        # majority holds, so an id nobody can fetch (a phantom) cannot stall the round's every attempt
        assignment = assign(entries, 1 if attempt == 0 else retry_holders(len(entries)))
        self._seniors = senior_ids(entries)
        self._merge_started = time.time()
        if not assignment:
            logger.info(f"round {r}: no updates; the version stays {self.version[:12]}")
            return True
        if self._sliced or (self._strategy is None and self._slices is not None and attempt > 0):
            # the weighted mean's retries run sliced too: the same bytes, but a reducer that lies is
            # named and excluded, where the all-reduce can only refuse a wrong sum (_audit_sum)
            return await self._merge_sliced(r, attempt, entries, assignment, until)
        if self._strategy is not None:
            return await self._merge_gathered(r, entries, assignment, until)
        carried = sorted(uid for uid, node in assignment.items() if node == self._identity.public_key)
        weighted = [(self._weight(uid, self._exchange.held[uid].sample_count), uid) for uid in carried]
        contribution = await asyncio.to_thread(self._contribution, weighted)
        if contribution.clipped:
            logger.warning(f"round {r}: {contribution.clipped} coordinates clipped to the fixed-point range")
        participants = [e.node for e in entries]
        digest = agreement_digest(entries)
        authors = sorted({node_id_of(self._exchange.held[uid].author) for uid in carried})
        if len(participants) == 1:
            summed, total_weight, contributors = contribution.q, contribution.weight, authors
        else:
            summed, total_weight, contributors = await self._allreduce(
                r, attempt, participants, digest, contribution, carried, authors, assignment, entered, until
            )
            await self._audit_sum(assignment, summed, until)
        new_state = await asyncio.to_thread(
            fixedpoint.next_version, self.state, self.layout, summed, total_weight, self.manifest.outer_lr
        )
        return await self._commit(
            r, new_state, sorted(assignment), contributors, participants, total_weight, until
        )

    def _held_ids(self, r: int) -> list[str]:
        """The updates for round r onto our version that we hold: what our entry lists."""
        return sorted(
            u.update_id for u in self._exchange.held.values() if u.round == r and u.base == self.version
        )

    async def _merge_gathered(
        self, r: int, entries: list[RoundEntry], assignment: dict[str, bytes], until: float
    ) -> bool:
        """A whole-vector strategy (robust aggregation): every participant merges every update of the
        round itself, deterministically, and the quorum of equal signatures shows they agree."""
        ids = sorted(assignment)
        await self._wait_for_updates(ids, until)

        def merge() -> tuple[dict[str, np.ndarray], list[str], int]:
            updates = [decode_update(self._exchange.read(uid)) for uid in ids]
            authors = sorted({node_id_of(u.update.author) for u in updates})
            updates = self._counted(updates)  # on probation: listed in the commit, not merged
            weights = [self.manifest.update_weight(u.update.sample_count) for u in updates]
            merged = (
                self._strategy.merge(updates, [float(w) for w in weights], round_seed=self._seed(r))
                if updates
                else {}
            )
            return next_state(self.state, merged, self.manifest.outer_lr), authors, sum(weights)

        new_state, contributors, total_weight = await asyncio.to_thread(merge)
        participants = [e.node for e in entries]
        return await self._commit(r, new_state, ids, contributors, participants, total_weight, until)

    async def _audit_sum(self, assignment: dict[str, bytes], summed: np.ndarray, until: float) -> None:
        """Recompute a random sample of the all-reduce's integer sums from the signed updates, carrier by
        carrier, and refuse the result if one differs: a participant that fed the all-reduce something
        other than its carried updates, or a reducer that returned a wrong part, is caught (but not named:
        hivemind's parts are not signed; a sliced strategy names the liar). Needs every update of the
        round, which the exchange fetches anyway (it waits for them while the attempt leaves time to sign).
        Without them the sum is refused too (counted): an update nobody can fetch would let its carrier
        add anything; the retry merges only updates a majority holds."""
        try:
            await self._wait_for_updates(sorted(assignment), until)
        except AttemptFailed as e:
            self.status.unaudited_sums += 1
            raise AttemptFailed(f"{e} to audit the all-reduce's sum: refusing to sign it") from None

        def check() -> int | None:
            length = self.layout.length
            k = min(AUDIT_SAMPLES * max(1, len(set(assignment.values()))), length)
            rng = np.random.default_rng(secrets.randbits(128))
            columns = np.sort(rng.choice(length, size=k, replace=False)).astype(np.int64)
            expected = np.zeros(k, dtype=np.int64)
            for carrier in sorted(set(assignment.values())):
                carried = [
                    (
                        self._weight(uid, self._exchange.held[uid].sample_count),  # probation: 0
                        decode_update(self._exchange.read(uid)),
                    )
                    for uid, node in assignment.items()
                    if node == carrier
                ]
                expected += fixedpoint.contribution_at(self.layout, carried, columns)
            wrong = np.flatnonzero(expected != summed[columns])
            return int(columns[wrong[0]]) if wrong.size else None

        column = await asyncio.to_thread(check)
        self.status.audited_sums += 1
        if column is not None:
            raise AttemptFailed(
                f"the all-reduce's sum at coordinate {column} is not the sum of the signed updates: "
                "refusing to sign it"
            )

    async def _wait_for_updates(self, ids: list[str], until: float) -> None:
        while missing := [uid for uid in ids if uid not in self._exchange.held]:
            if time.time() > until - 2 * QUORUM_MARGIN_S:
                raise AttemptFailed(f"{len(missing)} of the round's updates not fetched in time")
            await asyncio.sleep(0.2)

    # ---- defences (potluck.defence): bans and probation, agreed through the round entries -----------

    def _entry_extras(self, r: int, held: list[str]) -> dict[str, Any]:
        """Our entry's ``senior`` bitmap over ``held`` and ``excluded`` updates by banned authors."""
        return self._defence.entry_extras(r, held) if self._defence is not None else {}

    async def _check_defences(self, entries: list[RoundEntry], start: float) -> None:
        """Every exclusion an entry names must be backed by evidence we verified (or verify now, before
        the contributions are due); else this attempt stops here, the same way on every honest node."""
        if self._defence is not None:
            try:
                await self._defence.check_entries(entries, start + ENTRY_WINDOW_S + ENTRY_GRACE_S + 0.5)
            except DefenceError as e:
                raise AttemptFailed(str(e)) from None

    def _weight(self, uid: str, sample_count: int) -> int:
        """An update's merge weight in this attempt: 0 while its author is on probation."""
        return probation.update_weight(self.manifest, sample_count, uid in self._seniors)

    def _counted(self, updates: list[SignedUpdate]) -> list[SignedUpdate]:
        """The updates that weigh something (strategies that ignore weights must not see the others)."""
        return [u for u in updates if self._weight(u.update_id, u.update.sample_count) > 0]

    def _seed(self, r: int) -> int:
        """The round's seed for randomized strategies (DARE): the same on every node."""
        return int.from_bytes(hashlib.sha256(f"{self.run_id}/{r}".encode()).digest()[:8], "little")

    def _recompute(self, r: int, updates: list[SignedUpdate]) -> slices.Recompute:
        """The strategy at given coordinates of round r's merge of ``updates`` (reducing and auditing)."""
        weights = [float(self.manifest.update_weight(u.update.sample_count)) for u in updates]
        shapes = {s.name: s.shape for s in self.layout.slots}
        seed = self._seed(r)

        def recompute(columns: np.ndarray) -> np.ndarray:
            return self._column_strategy.merge_columns(
                updates, weights, round_seed=seed, shapes=shapes, columns=columns
            )

        return recompute

    async def _merge_sliced(
        self, r: int, attempt: int, entries: list[RoundEntry], assignment: dict[str, bytes], until: float
    ) -> bool:
        """A coordinate strategy inside the averaging: participant i reduces slice i of the merged delta
        and signs it; everyone fetches the other slices, checks them against their signed Merkle roots,
        audits a random sample of coordinates of each, and commits the assembled delta (rounds/slices.py).
        A reducer caught lying is convicted: its fault is published and it takes no further part."""
        assert self._slices is not None
        ids = sorted(assignment)
        await self._wait_for_updates(ids, until)
        updates = await asyncio.to_thread(lambda: [decode_update(self._exchange.read(uid)) for uid in ids])
        contributors = sorted({node_id_of(u.update.author) for u in updates})
        listed, updates = ids, self._counted(updates)  # on probation: listed in the commit, not merged
        ids = [u.update_id for u in updates]
        if not updates:
            return await self._commit(
                r, dict(self.state), listed, contributors, [e.node for e in entries], 0, until
            )
        recompute = self._recompute(r, updates)
        participants = [e.node for e in entries]
        bounds = slices.slice_bounds(self.layout.length, len(participants))
        me = participants.index(self._identity.public_key)
        lo, hi = bounds[me]
        values = await asyncio.to_thread(self._reduce_slice, recompute, lo, hi)
        digest = agreement_digest(entries)
        mine = slices.SliceHeader(
            self.run_id, r, attempt, self.version, digest, participants[me], lo, hi, tuple(ids),
            slices.merkle_root(values),
        )  # fmt: skip
        self._slices.offer(r, attempt, slices.SliceResult.make(mine, self._identity, values).to_bytes())
        addrs = {p.node_id: list(p.record.addrs) for p in self._peers()}
        widest = max(b - a for a, b in bounds)

        async def fetch(j: int) -> np.ndarray:
            node = participants[j]
            try:
                data = await self._slices.fetch(
                    node, addrs.get(node_id_of(node), []), r, attempt, 8 * widest + (64 << 10),
                    until - QUORUM_MARGIN_S,
                )  # fmt: skip
                header, result = slices.SliceResult.from_bytes(data, widest)
            except (SliceUnavailable, slices.BadSlice) as e:
                raise AttemptFailed(f"slice {j}: {e}") from None
            expected = (self.run_id, r, attempt, self.version, digest, node, *bounds[j], tuple(ids))
            got = (header.run, header.round, header.attempt, header.parent, header.digest, header.reducer,
                   header.lo, header.hi, header.updates)  # fmt: skip
            if got != expected:
                raise AttemptFailed(f"slice {j} was signed for another attempt or update set")
            fault = await asyncio.to_thread(slices.audit, header, result, recompute, AUDIT_SAMPLES)
            self.status.audited_slices += 1
            self.status.audited_coordinates += min(AUDIT_SAMPLES, header.hi - header.lo)
            if fault is not None:
                await self._publish_fault(fault)
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
            for s in self.layout.slots
            if s.name in touched
        }
        new_state = await asyncio.to_thread(next_state, self.state, merged, self.manifest.outer_lr)
        total_weight = sum(self.manifest.update_weight(u.update.sample_count) for u in updates)
        return await self._commit(r, new_state, listed, contributors, participants, total_weight, until)

    @staticmethod
    def _reduce_slice(recompute: slices.Recompute, lo: int, hi: int) -> np.ndarray:
        """This node's slice of the merged delta (tests replace it to make a lying reducer)."""
        return np.asarray(recompute(np.arange(lo, hi, dtype=np.int64)), dtype=np.float64)

    async def _publish_fault(self, fault: slices.ReducerFault) -> None:
        self._convict(fault, fault.header().round)
        self._faults_seen.add(bytes.fromhex(fault.id))
        await self._host.store(
            faults_key(self.run_id), bytes.fromhex(fault.id), fault.to_bytes(), time.time() + COMMIT_TTL_S
        )

    def _excluded(self, node: bytes) -> bool:
        """A participant convicted of a wrong slice (this session or, through the run's persisted bans,
        before a restart): its entries are ignored, so it takes no part in any attempt."""
        return node_id_of(node) in self.status.convicted

    def _convict(self, fault: slices.ReducerFault, round_: int) -> None:
        reducer, fault_id = fault.header().reducer, fault.id
        node = node_id_of(reducer)
        if node in self.status.convicted:
            return
        self.status.convicted[node] = (round_, fault_id)
        if self._defence is not None:  # a ban for the run: persisted, shown in status and peers
            self._defence.bans.ban(reducer, LYING_REDUCER, round_, fault_id, evidence=fault.to_bytes())
        logger.warning(
            f"reducer {node[:16]} convicted of a wrong slice in round {round_} (fault {fault_id[:12]})"
        )

    async def _learn_faults(self) -> None:
        """Verify reducer faults other participants published; convict those they prove. A fault is
        checked against our own copies of the updates its reducer merged (until we hold them all, it
        waits); one that proves nothing is counted and ignored."""
        if self._slices is None or (self._strategy is not None and not self._sliced):
            return  # this run never slices (a gathered strategy)
        try:
            items = await self._host.get(faults_key(self.run_id))
        except Exception as e:
            logger.debug(f"reading reducer faults: {e}")
            return
        checked = 0
        for subkey, item in items.items():
            if checked >= MAX_FAULTS_READ:
                break
            if not isinstance(subkey, bytes) or subkey in self._faults_seen:
                continue
            try:
                fault = slices.ReducerFault.from_bytes(item.value)
                header = fault.header()
                if header.run != self.run_id or any(uid not in self._exchange.held for uid in header.updates):
                    if header.run != self.run_id:
                        raise slices.BadSlice("a fault of another run")
                    continue  # cannot check it yet
                checked += 1
                updates = await asyncio.to_thread(
                    lambda h=header: [decode_update(self._exchange.read(uid)) for uid in h.updates]
                )
                await asyncio.to_thread(fault.verify, self._recompute(header.round, updates))
            except slices.BadSlice as e:
                self.status.bad_faults += 1
                self._faults_seen.add(subkey)
                logger.info(f"ignoring a reducer fault: {e}")
                continue
            self._faults_seen.add(subkey)
            self._convict(fault, header.round)

    async def _commit(
        self, r: int, new_state: dict[str, np.ndarray], update_ids: list[str], contributors: list[str],
        participants: list[bytes], total_weight: int, until: float,
    ) -> bool:  # fmt: skip
        self.status.last_merge_s = time.time() - self._merge_started
        commit = Commit(
            run_id=self.run_id,
            round=r,
            parent=self.version,
            version=version_hash(new_state),
            tensor_hashes=tensor_hashes(new_state),
            updates=tuple(update_ids),
            contributors=tuple(contributors),
            participants=tuple(sorted(node_id_of(p) for p in participants)),
            total_weight=total_weight,
        )
        signatures = await self._collect_quorum(commit, until)
        await asyncio.to_thread(self._persist, commit, signatures, new_state)
        logger.info(
            f"round {r}: committed {commit.version[:12]} from {len(commit.updates)} updates, "
            f"{len(participants)} participants, {len(signatures)} signatures"
        )
        return True

    def _contribution(self, weighted: list[tuple[int, str]]) -> fixedpoint.Contribution:
        carried = [(w, decode_update(self._exchange.read(uid)).update) for w, uid in weighted]
        return fixedpoint.contribution(self.layout, carried)

    async def _read_entries(self, key: str, r: int, attempt: int) -> list[RoundEntry]:
        entries = []
        for subkey, item in (await self._host.get(key)).items():
            try:
                entry = RoundEntry.verify(item.value)
            except BadEntry as e:
                logger.debug(f"ignoring round entry: {e}")
                continue
            if (entry.run, entry.round, entry.attempt, entry.node) != (self.run_id, r, attempt, subkey):
                continue
            if entry.base != self.version:  # on another branch: it will sync, not take part
                continue
            if self._excluded(entry.node):
                continue
            entries.append(entry)
        return entries

    async def _allreduce(
        self,
        r: int,
        attempt: int,
        participants: list[bytes],
        digest: str,
        contribution: fixedpoint.Contribution,
        carried: list[str],
        authors: list[str],
        assignment: dict[str, bytes],
        start: float,
        until: float,
    ) -> tuple[np.ndarray, int, list[str]]:
        sentinel = fixedpoint.new_sentinel()
        packed = await asyncio.to_thread(fixedpoint.pack, self.layout, contribution.q, sentinel)
        n = len(participants)
        averager = CanonicalAverager(
            [torch.from_numpy(packed)],
            self._host.dht,
            start=False,
            prefix=f"potluck_{self.run_id[:16]}_r{r}_a{attempt}",
            target_group_size=next_power_of_two(n),
            min_group_size=n,
            min_matchmaking_time=MATCHMAKING_S,
            request_timeout=MATCHMAKING_S / 2,
            allreduce_timeout=ALLREDUCE_TIMEOUT_S,
            allow_state_sharing=False,
            min_vector_size=fixedpoint.ROW,  # every peer's slice holds at least one sentinel
        )
        averager.run_in_background(await_ready=False)
        self._restore_signals()  # hivemind sets SIGINT to "ignore" in the host process
        try:
            await asyncio.to_thread(averager.wait_until_ready, 10)
            gather = {
                "digest": digest,
                "sentinel": sentinel,
                "checksum": str(fixedpoint.checksum(contribution.q)),  # may exceed 64 bits
                "carried": carried,
                "authors": authors,  # node ids of the carried updates' authors: the commit names them all
                "weight": contribution.weight,
                "node": self._identity.public_key,
            }
            scheduled = start + self.prep_s
            try:
                gathered = await asyncio.to_thread(
                    averager.step,
                    gather=gather,
                    scheduled_time=scheduled,
                    timeout=max(until - time.time() - QUORUM_MARGIN_S, MATCHMAKING_S + 0.5),
                    allow_retries=False,
                )
            except Exception as e:
                raise AttemptFailed(f"all-reduce failed: {type(e).__name__}: {e}") from None
            if not gathered:
                raise AttemptFailed("no group formed")
            peers = [_checked_gather(p) for p in gathered.values()]
            if sorted(p["node"] for p in peers) != sorted(participants):
                raise AttemptFailed(f"group of {len(peers)} is not the {n} participants")
            if any(p.get("digest") != digest for p in peers):
                raise AttemptFailed("participants derived the assignment from different entries")
            carried_all = sorted(uid for p in peers for uid in p["carried"])
            if carried_all != sorted(assignment):
                raise AttemptFailed("carried updates differ from the assignment")
            with averager.get_tensors() as tensors:
                averaged = tensors[0].numpy().copy()
            sentinels = sum(int(p["sentinel"]) for p in peers)
            checksums = sum(int(p["checksum"]) for p in peers)
            try:
                summed = await asyncio.to_thread(
                    fixedpoint.unpack, self.layout, averaged, n, sentinels, checksums
                )
            except fixedpoint.PartialResult as e:
                raise AttemptFailed(f"partial all-reduce result: {e}") from None
            contributors = sorted({a for p in peers for a in p["authors"]})
            return summed, sum(int(p["weight"]) for p in peers), contributors
        finally:
            await asyncio.to_thread(_shutdown_averager, averager)

    async def _collect_quorum(self, commit: Commit, until: float) -> list[CommitSignature]:
        key = commits_key(self.run_id, commit.round)
        mine = sign_commit(commit, self._identity)
        await self._host.store(
            key, self._identity.public_key, signed_commit_bytes(commit, mine), time.time() + COMMIT_TTL_S
        )
        tracker = QuorumTracker(self.run_id, commit.round, self.manifest.quorum)
        tracker.add(commit, mine)
        while True:
            if tracker.count(commit.id) >= self.manifest.quorum:
                return tracker.signatures(commit.id)
            if time.time() >= until:
                raise AttemptFailed(f"only {tracker.count(commit.id)} of {self.manifest.quorum} signatures")
            await asyncio.sleep(0.3)
            await self._read_commits(key, tracker)

    async def _read_commits(self, key: str, tracker: QuorumTracker) -> None:
        for item in (await self._host.get(key)).values():
            with contextlib.suppress(CommitError):
                other, signature = parse_signed_commit(item.value)
                tracker.add(other, signature)

    # ---- catching up -------------------------------------------------------------------------------

    async def catch_up(self) -> bool:
        """Move to the run's winning history when peers report another committed version; True if we moved.

        Peers ahead of us: verify the newer round's quorum-signed commit and download its version.
        Peers at our round with another version (two halves of a split swarm each committed): both
        commits are judged by the same fork choice (more signatures, then the lower commit id) on every
        node, and the losing half switches to the winner, replacing that round in its history.
        """
        others = [
            p for p in self._peers()
            if p.record.model_version and p.record.model_version != self.version
            and p.record.round >= self.committed_round + 1
        ]  # fmt: skip
        if not others:
            return False
        target_round = max(p.record.round for p in others) - 1
        tracker = QuorumTracker(self.run_id, target_round, self.manifest.quorum)
        mine = self._history.get(target_round) if target_round == self.committed_round else None
        if mine is not None:
            for signature in self._history.signatures(target_round):
                tracker.add(mine, signature)
        await self._read_commits(commits_key(self.run_id, target_round), tracker)
        commit = tracker.winner()
        if commit is None or commit.version == self.version:
            return False
        holders = [
            (p.record.peer_id, list(p.record.addrs))
            for p in self._peers()
            if p.record.model_version == commit.version
        ]
        self.status.phase = "syncing"
        state = await self._state.download(commit.version, commit.tensor_hashes, holders, have=self.state)
        if version_hash(state) != commit.version:  # every tensor matched, so this cannot happen
            raise AttemptFailed("downloaded state does not hash to the commit's version")
        switch = mine is not None
        await asyncio.to_thread(self._persist, commit, tracker.signatures(commit.id), state, switch)
        if switch:
            self.status.fork_switches += 1
            logger.warning(
                f"round {commit.round}: switched from {mine.version[:12]} to {commit.version[:12]}, "
                f"the fork choice's winner ({tracker.count(commit.id)} signatures)"
            )
        else:
            logger.info(
                f"caught up to round {commit.round}: {commit.version[:12]} from {len(holders)} holders"
            )
        return True

    def _persist(
        self,
        commit: Commit,
        signatures: list[CommitSignature],
        state: dict[str, np.ndarray],
        replace: bool = False,
    ) -> None:
        # the version first, then the history row: a crash in between leaves V_r as the latest commit
        stored = self._versions.put(state)
        if stored != commit.version:
            raise AttemptFailed(f"stored state hashes to {stored}, the commit says {commit.version}")
        self._history.record(commit, signatures, replace=replace)
        self.state, self.version, self.committed_round = state, commit.version, commit.round
        self.status.last_participants = list(commit.participants)
        self._host.call_soon(self._publish_version)

    @property
    def placement(self) -> str:
        """Where the merge runs: inside hivemind's all-reduce, per reducer slice, or on gathered updates."""
        return "allreduce" if self._strategy is None else "sliced" if self._sliced else "gathered"

    def aggregation_status(self) -> control_pb2.Aggregation:
        st = self.status
        return control_pb2.Aggregation(
            strategy=self.manifest.strategy,
            placement=self.placement,
            audited_slices=st.audited_slices,
            audited_coordinates=st.audited_coordinates,
            convicted=[
                control_pb2.Conviction(node_id=node, round=round_, fault_id=fault)
                for node, (round_, fault) in sorted(st.convicted.items())
            ],
            bad_faults=st.bad_faults,
            last_merge_s=st.last_merge_s,
            audited_sums=st.audited_sums,
            unaudited_sums=st.unaudited_sums,
        )


def _checked_gather(data: Any) -> dict[str, Any]:
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


async def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _shutdown_averager(averager: CanonicalAverager) -> None:
    with contextlib.suppress(Exception):
        averager.shutdown()
    averager.join(timeout=3)
    if averager.is_alive():
        averager.kill()
