"""The agreed history a history-aware strategy merges with (merge/context.py), on a live node.

For round r onto V_r the strategy gets the merged steps of the last N commits of the chain that ends at
V_r (rounds/merging.py: ``history_chain``, ``history_steps``). Every input is named by hashes that the
quorum signed, so every node derives the same bytes whatever it happened to see:

* the chain: each commit's parent, from this node's history; a node whose history starts later (it
  synced to a later version, or caught up across rounds) asks its peers for the commit that made the
  version (``potluck.v1.GetCommit``) and takes it only with the manifest's quorum of valid participant
  signatures on it, then records it in its own history (with those signatures, once its version is
  stored), so its history fills in and `potluck verify --from` can follow the chain too;
* the versions: from this node's version store (patches materialised); one it lacks (a synced node
  never stored its start's parent; `potluck gc` dropped it) is downloaded from its peers by hash
  (``StateService.fetch_version``: the tensor list must make up the hash, each tensor its hash) and
  stored.

A run whose probe keeps a per-author record (potluck.merge.record) needs one commit, the one that made
V_r, which names the record before the round; fetched the same way if this node lacks it
(:meth:`RoundHistory.record`).

What cannot be had fails the attempt with one line (its round, the version, why); the node then follows
the round's commit like a client, and the next attempt or round asks again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np

from potluck.engine.attempt import Attempt, AttemptFailed
from potluck.exchange.state import StateService, SyncFailed
from potluck.manifest import Manifest
from potluck.rounds.commit import Commit, CommitError, CommitSignature, QuorumTracker
from potluck.rounds.merging import HistoryGap, history_chain, history_steps
from potluck.store.history import History, HistoryError
from potluck.store.versions import CorruptVersion, VersionNotFound, VersionStore
from potluck.swarm.membership import PeerInfo

logger = logging.getLogger(__name__)

State = dict[str, np.ndarray]


class RoundHistory:
    """``previous(attempt)``: the merged steps a history-aware strategy needs, newest first (module doc).
    Also serves this node's recorded commits to peers that lack them (``StateService.commits``)."""

    def __init__(
        self,
        *,
        manifest: Manifest,
        rounds: int,
        history: History,
        versions: VersionStore,
        state_service: StateService,
        peers: Callable[[], list[PeerInfo]],
    ) -> None:
        self._manifest, self._rounds, self._history, self._versions = manifest, rounds, history, versions
        self._state_service, self._peers = state_service, peers
        # version -> the commit that made it and its signatures, fetched from peers, recorded once stored
        self._fetched: dict[str, tuple[Commit, list[CommitSignature]]] = {}
        self._cache: dict[str, State] = {}  # the last chain's states
        state_service.commits = self.recorded

    def recorded(self, run_id: str, version: str) -> tuple[bytes, list[bytes]] | None:
        """GetCommit's answer: the recorded commit of this run that made ``version``, its signatures."""
        found = self._history.made(version) if run_id == self._manifest.run_id else None
        if found is None:
            return None
        commit, signatures = found
        return commit.body(), [s.to_bytes(commit.id) for s in signatures]

    def _parent_of(self, version: str) -> str | None:
        fetched = self._fetched.get(version)
        return fetched[0].parent if fetched is not None else self._history.parent_of(version)

    async def _chain(self, a: Attempt, rounds: int) -> list[str]:
        """:func:`history_chain` of ``a``'s base, fetching the commits this node's history lacks."""
        while True:
            try:
                return history_chain(a.version, self._manifest.genesis, self._parent_of, rounds)
            except HistoryGap as e:
                await self._fetch_commit(a, e.version)

    async def record(self, a: Attempt) -> dict[str, float]:
        """The probe record before ``a``'s round: that of the commit that made its base (none: genesis)."""
        if a.version == self._manifest.genesis:
            return {}
        made = self._fetched.get(a.version) or await asyncio.to_thread(self._history.made, a.version)
        if made is None:
            await self._fetch_commit(a, a.version)
            made = self._fetched[a.version]
        return dict(made[0].record)

    async def previous(self, a: Attempt) -> tuple[State, ...]:
        """The steps of the last ``rounds`` commits before ``a``'s round; :class:`AttemptFailed` (one line)
        when this node cannot get the commits or versions they need."""
        chain = await self._chain(a, self._rounds)
        states = [a.state] + [await self._state(a, v) for v in chain[1:]]
        self._cache = dict(zip(chain, states, strict=True))
        for version in chain:
            if version in self._fetched:
                await asyncio.to_thread(self._record, *self._fetched.pop(version))
        return await asyncio.to_thread(history_steps, states, self._manifest.outer_lr)

    def _holders(self) -> list[tuple[str, list[str]]]:
        return [(p.record.peer_id, list(p.record.addrs)) for p in self._peers() if p.record.role != "client"]

    async def _fetch_commit(self, a: Attempt, version: str) -> None:
        """The commit that made ``version``, from peers, with a quorum of participant signatures."""
        m = self._manifest
        for body, signatures in await self._state_service.fetch_commit(m.run_id, version, self._holders()):
            try:
                commit = Commit.from_bytes(body)
                if commit.version != version or commit.parent == version or commit.run_id != m.run_id:
                    continue
                tracker = QuorumTracker(m.run_id, commit.round, m.quorum)
                for data in signatures:
                    cid, signature = CommitSignature.from_bytes(data)
                    if cid == commit.id:
                        tracker.add(commit, signature)
            except CommitError:
                continue
            if tracker.count(commit.id) >= m.quorum:
                self._fetched[version] = (commit, tracker.signatures(commit.id))
                logger.info(f"round {a.round}: fetched the commit of {version[:12]} (round {commit.round})")
                return
        raise AttemptFailed(
            f"round {a.round}: the merge needs the steps of the last {self._rounds} commits; this node's "
            f"history has no commit of version {version[:12]} and no peer served one with a quorum"
        )

    def _record(self, commit: Commit, signatures: list[CommitSignature]) -> None:
        try:
            self._history.record(commit, signatures)
        except HistoryError as e:  # another commit of that round here (a fork): keep ours, use theirs now
            logger.warning(f"the fetched commit of round {commit.round} is not recorded: {e}")

    async def _state(self, a: Attempt, version: str) -> State:
        if version in self._cache:
            return self._cache[version]
        try:
            return await asyncio.to_thread(self._versions.get, version)
        except (VersionNotFound, CorruptVersion) as e:
            why = "not stored" if isinstance(e, VersionNotFound) else "damaged"
        try:
            state = await self._state_service.fetch_version(version, self._holders())
        except SyncFailed as e:
            raise AttemptFailed(
                f"round {a.round}: the merge needs version {version[:12]}, {why} here, and no peer served "
                f"it: {e}"
            ) from None
        await asyncio.to_thread(self._versions.put, state)
        logger.info(f"round {a.round}: fetched version {version[:12]} ({why} here) for the merge's history")
        return state
