"""The defence service: equivocation evidence in the swarm, bans, and what the round engine needs.

Data flow:

found      the validator sees a second, different signed update by one author for one round ->
           the exchange keeps both updates in its evidence store -> :meth:`DefenceService.found`
           checks the pair (potluck.defence.evidence.check_equivocation), bans the author and
           publishes a small signed record under ``potluck/<run>/evidence/<round>``.
verified   every node polls the evidence keys of the rounds it validates (backing off while nothing
           changes, potluck.swarm.cadence; ``poll.wake()`` asks for a poll now), fetches both updates of
           each new record by id (from the reporter, then any peer: every verifier keeps and serves
           them), checks them, and on success bans the author and publishes its own record (so the
           evidence outlives its first reporter). A bogus record (bad signature, one update twice,
           another author, run or round, bytes that are not the named update) is rejected and
           counted by reason, and never bans anyone; one whose updates nobody serves is retried,
           then given up as ``unavailable``.
rounds     the engine asks :meth:`entry_extras` for its signed round entry (the round's updates by
           banned authors, each with the evidence id of the ban; which held updates have authors past
           probation) and, once it has read every participant's entry, :meth:`check_entries`: every
           exclusion another participant names must be backed by evidence this node has verified or
           verifies now, else the attempt stops (:class:`DefenceError`). The rules that make every
           participant agree are in potluck.rounds.entries and potluck.defence.probation.

Bans are kept by the :class:`~potluck.defence.bans.BanRegistry` (persistent, general: other checks
ban with their own reason). This service re-publishes the records of the equivocation bans it holds
every third of their lifetime, restarts included.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from potluck.defence.bans import Ban, BanRegistry
from potluck.defence.evidence import (
    REASON,
    BadEvidence,
    Equivocation,
    EvidenceRecord,
    check_equivocation,
    evidence_key,
)
from potluck.defence.seniority import Seniority
from potluck.exchange.service import UpdateExchange
from potluck.identity import NodeIdentity, node_id_of, peer_id_of
from potluck.manifest import Manifest
from potluck.rounds.entries import MAX_ENTRY_EXCLUDED, RoundEntry, excluded_ids
from potluck.store.history import History
from potluck.swarm.cadence import Cadence
from potluck.swarm.host import SwarmHost
from potluck.swarm.membership import PeerInfo
from potluck.updates.validation import EquivocationSeen

__all__ = ["DefenceError", "DefenceService"]

logger = logging.getLogger(__name__)

RECORD_TTL_S = 3600.0
POLL_INTERVAL_S = 1.0
MAX_POLL_INTERVAL_S = 8.0  # evidence is rare; a round entry that names unseen evidence is read at once
RETRY_S = 5.0  # an unavailable piece of evidence is tried again after this
MAX_TRIES = 6  # ... this many times, then rejected as "unavailable"
MAX_SEEN_VALUES = 10_000


class DefenceError(Exception):
    """A round entry names an exclusion this node cannot back with verified evidence."""


class DefenceService:
    def __init__(
        self,
        *,
        host: SwarmHost,
        identity: NodeIdentity,
        run: str,
        bans: BanRegistry,
        exchange: UpdateExchange,
        peers: Callable[[], list[PeerInfo]],
        manifest: Manifest | None = None,
        record_ttl_s: float = RECORD_TTL_S,
        poll_interval_s: float = POLL_INTERVAL_S,
    ):
        self._host, self._identity, self._run = host, identity, run
        self.bans, self._exchange, self._peers = bans, exchange, peers
        self.manifest, self._ttl_s = manifest, record_ttl_s
        self.seniority = Seniority(manifest)  # its history is set by the node once the run's history is open
        # evidence id -> claim, for every piece of evidence this node has checked and found good
        self.verified: dict[str, Equivocation] = {}
        self.rejected: dict[str, str] = {}  # evidence id -> reason code
        self.rejections: Counter[str] = Counter()  # reason code -> records rejected
        self.found = 0  # equivocations this node saw itself
        self.published = 0  # records stored in the DHT
        self._tries, self._retry_at = dict[str, int](), dict[str, float]()
        self._inflight: dict[str, asyncio.Task] = {}
        self._seen_values: set[bytes] = set()
        self._publish_now = asyncio.Event()
        self.poll = Cadence(poll_interval_s, MAX_POLL_INTERVAL_S)
        self._tasks: list[asyncio.Task] = []
        for ban in bans.list():  # evidence verified before a restart
            claim = _claim_of(ban)
            if claim is not None:
                self.verified[claim.evidence_id] = claim
        exchange.on_equivocation = self.on_found

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._poll_forever(), name="evidence-poll"),
            asyncio.create_task(self._publish_forever(), name="evidence-publish"),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._inflight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- evidence this node finds ------------------------------------------------------------------

    def on_found(self, found: EquivocationSeen, first: bytes, second: bytes) -> None:
        """The exchange's equivocation hook (on the event loop): check, ban, publish."""
        self.found += 1
        try:
            claim = Equivocation.of(self._run, found.round, found.author, found.first_id, found.second_id)
            ordered = (first, second) if claim.first_id == found.first_id else (second, first)
            check_equivocation(claim, *ordered, self._exchange.validator.context.limits)
        except BadEvidence as e:  # cannot happen for what the validator accepted and rejected; log it
            logger.warning(f"equivocation by {node_id_of(found.author)[:12]} does not check out: {e}")
            return
        self._accept(claim, *ordered, source="found")

    def _accept(self, claim: Equivocation, first: bytes, second: bytes, source: str) -> None:
        store = self._exchange.evidence_store
        if store is not None:
            store.put(claim.first_id, first)
            store.put(claim.second_id, second)
        eid = claim.evidence_id
        new = eid not in self.verified
        self.verified[eid] = claim
        self.rejected.pop(eid, None)
        if new:
            logger.warning(
                f"equivocation by {node_id_of(claim.author)[:16]} in round {claim.round} ({source}): "
                f"{claim.first_id[:12]} and {claim.second_id[:12]}; evidence {eid[:16]}"
            )
        self.bans.ban(claim.author, REASON, claim.round, eid, evidence=claim.body())
        self._publish_now.set()

    # ---- evidence in the swarm ---------------------------------------------------------------------

    def _rounds(self) -> range:
        rounds = self._exchange.rounds_of_interest()
        return range(max(0, rounds.start - 1), rounds.stop)

    async def _poll_forever(self) -> None:
        last: tuple[range, set[Any]] = (range(0), set())  # the rounds and records the last poll read
        while True:
            await self._host.bootstrap.connected_event.wait()
            changed, rounds, found = self.poll.take_wake(), self._rounds(), set()
            try:
                for round_ in rounds:
                    for item in (await self._host.get(evidence_key(self._run, round_))).values():
                        found.add(item.value if isinstance(item.value, bytes) else None)
                        self._consider(item.value, round_)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.debug(f"reading evidence failed: {type(e).__name__}: {e}")
                changed = True
            changed, last = changed or rounds != last[0] or not found <= last[1], (rounds, found)
            await self.poll.sleep(self.poll.after(changed))

    def _consider(self, value: Any, round_: int) -> Equivocation | None:
        """A record read from the DHT: start verifying it unless it is known (counted once if bogus)."""
        if not isinstance(value, bytes):
            return None
        digest = hashlib.sha256(value).digest()
        try:
            record = EvidenceRecord.verify(value)
            claim = record.claim
            if claim.run != self._run:
                raise BadEvidence("wrong_run", claim.run[:32])
            if claim.round != round_:
                raise BadEvidence("wrong_round", f"record for round {claim.round} under round {round_}")
        except BadEvidence as e:
            if digest not in self._seen_values:
                if len(self._seen_values) > MAX_SEEN_VALUES:
                    self._seen_values.clear()
                self._seen_values.add(digest)
                self.rejections[e.reason] += 1
                logger.info(f"rejected an evidence record: {e}")
            return None
        self._verify_soon(claim, [peer_id_of(record.reporter)])
        return claim

    def _verify_soon(self, claim: Equivocation, holders: list[str], now: bool = False) -> asyncio.Task | None:
        """Start verifying ``claim`` (``now``: even if a retry is not due yet); the task, if one runs."""
        eid = claim.evidence_id
        if eid in self.verified or eid in self.rejected:
            return None
        if eid in self._inflight:
            return self._inflight[eid]
        if not now and self._retry_at.get(eid, 0.0) > time.monotonic():
            return None
        task = asyncio.create_task(self._verify(claim, holders), name=f"verify-{eid[:12]}")
        self._inflight[eid] = task
        task.add_done_callback(lambda _: self._inflight.pop(eid, None))
        return task

    async def _verify(self, claim: Equivocation, holders: list[str]) -> bool:
        """Fetch both updates and check them; True if the claim holds (the author is then banned)."""
        eid = claim.evidence_id
        others = [p.record.peer_id for p in self._peers() if p.record.peer_id not in holders]
        datas = []
        for uid in claim.update_ids:
            data = await self._exchange.fetch_by_id(uid, [*holders, *others])
            if data is None:
                self._tries[eid] = tries = self._tries.get(eid, 0) + 1
                if tries >= MAX_TRIES:
                    self._reject(eid, BadEvidence("unavailable", f"nobody serves {uid[:16]}"))
                else:
                    self._retry_at[eid] = time.monotonic() + RETRY_S
                return False
            datas.append(data)
        limits = self._exchange.validator.context.limits
        try:
            await asyncio.to_thread(check_equivocation, claim, *datas, limits)
        except BadEvidence as e:
            self._reject(eid, e)
            return False
        self._accept(claim, *datas, source="verified")
        return True

    def _reject(self, eid: str, error: BadEvidence) -> None:
        if eid not in self.rejected:
            self.rejected[eid] = error.reason
            self.rejections[error.reason] += 1
            logger.warning(f"rejected evidence {eid[:16]}: {error}")

    async def _publish_forever(self) -> None:
        while True:
            await self._host.bootstrap.connected_event.wait()
            self._publish_now.clear()
            try:
                await self.publish_all()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning(f"publishing evidence failed: {type(e).__name__}: {e}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._publish_now.wait(), self._ttl_s / 3)

    async def publish_all(self) -> None:
        """Store a record of ours for every equivocation ban whose two updates this node holds."""
        now = time.time()
        for ban in self.bans.list():
            claim = _claim_of(ban)
            if claim is None or claim.run != self._run:
                continue
            if not all(self._exchange.read_any(uid) is not None for uid in claim.update_ids):
                continue
            value = EvidenceRecord(claim, self._identity.public_key, now).sign(self._identity)
            key = evidence_key(self._run, claim.round)
            if await self._host.store(key, claim.evidence_id.encode(), value, now + self._ttl_s):
                self.published += 1

    # ---- the round engine --------------------------------------------------------------------------

    def entry_extras(self, round_: int, held: Sequence[str]) -> dict[str, Any]:
        """The defence fields of this node's round entry: ``senior`` over ``held``, ``excluded``."""
        return {"senior": self._senior_bits(held), "excluded": self.exclusions(round_)}

    def exclusions(self, round_: int) -> tuple[tuple[str, str, int], ...]:
        """(update id, evidence id, evidence round) for the round's updates by banned authors that this
        node knows of: held, seen by the validator, or named by evidence."""
        known: dict[str, bytes] = {u.update_id: u.author for u in self._exchange.holding(round_)}
        known.update(self._exchange.validator.ids_by(round_))
        for claim in self.verified.values():
            if claim.round == round_:
                known.update(dict.fromkeys(claim.update_ids, claim.author))
        out = []
        for uid, author in known.items():
            ban = self.bans.get(author)
            if ban is not None:
                out.append((uid, ban.evidence_id, ban.round))
        return tuple(sorted(out)[:MAX_ENTRY_EXCLUDED])

    async def check_entries(self, entries: Sequence[RoundEntry], deadline: float) -> None:
        """Raise :class:`DefenceError` unless every exclusion named in ``entries`` is backed by evidence
        this node has verified (verifying what it has not seen yet, until ``deadline``), against the
        author of the excluded update wherever this node knows it."""
        for uid, named in sorted(excluded_ids(entries).items()):
            for eid, evidence_round in sorted(named):
                author = await self._backed(eid, evidence_round, deadline)
                known = self._author_of(uid)
                if known is not None and known != author:
                    raise DefenceError(
                        f"update {uid[:12]} is excluded by evidence against {author.hex()[:12]}, "
                        f"but its author is {known.hex()[:12]}"
                    )

    async def _backed(self, eid: str, evidence_round: int, deadline: float) -> bytes:
        """The banned author evidence ``eid`` proves, verifying it now if needed; else DefenceError."""
        claim = self.verified.get(eid)
        if claim is None:
            ban = self.bans.by_evidence(eid)  # banned for another reason by this node itself
            if ban is not None:
                return ban.node_id
        if claim is None and eid not in self.rejected:
            item = (await self._host.get(evidence_key(self._run, evidence_round))).get(eid.encode())
            task = None
            with contextlib.suppress(BadEvidence):
                record = EvidenceRecord.verify(item.value) if item is not None else None
                if record is not None and record.claim.evidence_id == eid:
                    task = self._verify_soon(record.claim, [peer_id_of(record.reporter)], now=True)
            if task is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.time()))
            claim = self.verified.get(eid)
        if claim is None:
            why = self.rejected.get(eid, "not verified in time")
            raise DefenceError(f"a round entry names evidence {eid[:16]} this node cannot back: {why}")
        return claim.author

    def _author_of(self, uid: str) -> bytes | None:
        held = self._exchange.held_update(uid)
        if held is not None:
            return held.author
        for claim in self.verified.values():
            if uid in claim.update_ids:
                return claim.author
        for (author, _), ids in list(self._exchange.validator.signed_ids.items()):
            if uid in ids:
                return author
        return None

    def _senior_bits(self, held: Sequence[str]) -> bytes:
        authors = [self._exchange.held_update(uid) for uid in held]
        return self.seniority.senior_bits(node_id_of(a.author) if a is not None else None for a in authors)

    def rounds_left(self, node_id: str) -> int:
        return self.seniority.rounds_left(node_id)

    @property
    def history(self) -> History | None:
        return self.seniority.history

    @history.setter
    def history(self, history: History | None) -> None:
        self.seniority.history = history

    # ---- status ------------------------------------------------------------------------------------

    def on_probation(self) -> dict[str, int]:
        """node id -> rounds left, for the authors this node knows of (history, held updates) still on
        probation by its own history."""
        out = self.seniority.on_probation(node_id_of(u.author) for u in self._exchange.holding())
        return {a: left for a, left in out.items() if not self.bans.is_banned(bytes.fromhex(a))}

    def ban_of(self, node_id: str) -> Ban | None:
        try:
            return self.bans.get(bytes.fromhex(node_id))
        except ValueError:
            return None

    def status_fields(self) -> dict[str, Any]:
        return {
            "bans": [
                {"node_id": b.node_id.hex(), "reason": b.reason, "round": b.round,
                 "evidence_id": b.evidence_id, "since": b.since}
                for b in self.bans.list()
            ],
            "probation": [{"node_id": a, "rounds_left": left} for a, left in self.on_probation().items()],
            "probation_rounds": self.seniority.rounds,
            "max_updates_per_author": self._exchange.validator.max_per_author_round or 0,
            "equivocations_found": self.found,
            "evidence_verified": len(self.verified),
            "evidence_rejected": dict(self.rejections),
            "evidence_pending": len(self._inflight) + sum(
                1 for eid in self._retry_at if eid not in self.verified and eid not in self.rejected
            ),
            "evidence_published": self.published,
        }  # fmt: skip


def _claim_of(ban: Ban) -> Equivocation | None:
    if ban.reason != REASON or not ban.evidence:
        return None
    try:
        return Equivocation.from_bytes(ban.evidence)
    except BadEvidence:
        return None
