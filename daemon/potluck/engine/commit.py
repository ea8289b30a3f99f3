"""From a merged version to a committed one, and from a peer's commit to ours.

commit     the placement's :class:`~potluck.engine.attempt.Merged` becomes a Commit (rounds/commit.py);
           this node signs it, stores the signature under ``potluck/<run>/commits/<round>`` and pushes
           it to the keepers, reads the others' until the manifest's quorum signed the same commit, then
           persists (the version first, then the history row) and pushes its signature once more to
           every peer: a notice that the version can be fetched from it now.
catch-up   peers report another committed version (in their records, or by such a notice): verify the
           newer round's quorum-signed commit and download its version; at our own round (a split
           swarm's halves each committed) the fork choice (more signatures, then the lower commit id)
           picks the same winner on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import numpy as np

from potluck.engine.attempt import Attempt, AttemptFailed, Merged, RoundStatus
from potluck.exchange.state import StateService
from potluck.hashing import tensor_hashes, version_hash
from potluck.identity import NodeIdentity, node_id_of, peer_id_of
from potluck.manifest import Manifest
from potluck.rounds.commit import Commit, CommitError, CommitSignature, QuorumTracker, sign_commit
from potluck.store.history import History
from potluck.store.versions import VersionStore
from potluck.swarm.bulletin import Bulletin
from potluck.swarm.membership import PeerInfo
from potluck.vcs import damping
from potluck.wire import WireError, pack_pair, unpack_pair

logger = logging.getLogger(__name__)

MAX_SIGNED_COMMIT_BYTES = 14 << 10
COMMIT_TTL_S = 24 * 3600.0
DHT_READ_S = 1.0  # between the pushes, how often the quorum's signatures are looked for in the DHT


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


# what the engine learns of a commit this module persisted (ours, or one caught up to): V becomes its version
OnCommitted = Callable[[Commit, dict[str, np.ndarray]], None]


class Committer:
    def __init__(
        self,
        *,
        bulletin: Bulletin,
        identity: NodeIdentity,
        manifest: Manifest,
        versions: VersionStore,
        history: History,
        state_service: StateService,
        peers: Callable[[], list[PeerInfo]],
        status: RoundStatus,
        on_committed: OnCommitted,
    ):
        self._bulletin, self._identity, self._manifest = bulletin, identity, manifest
        self._versions, self._history, self._state = versions, history, state_service
        self._peers, self._status, self._on_committed = peers, status, on_committed

    async def commit(self, attempt: Attempt, merged: Merged) -> Commit:
        commit = Commit(
            run_id=attempt.run_id,
            round=attempt.round,
            parent=attempt.version,
            version=version_hash(merged.state),
            tensor_hashes=tensor_hashes(merged.state),
            updates=tuple(merged.updates),
            contributors=tuple(merged.contributors),
            participants=tuple(sorted(node_id_of(p) for p in merged.participants)),
            total_weight=merged.total_weight,
            record=tuple(merged.record.items()),
        )
        mine = sign_commit(commit, self._identity)
        signatures = await self._collect_quorum(commit, mine, attempt.until)
        await asyncio.to_thread(self._persist, commit, signatures, merged.state)
        if merged.damped:  # what `potluck show` says of the updates its strategy counted less
            await asyncio.to_thread(damping.write, self._history.path.parent, commit.version, merged.damped)
        # a notice to the peers that did not take part (they catch up now), the others have their own
        key, signed = commits_key(commit.run_id, commit.round), signed_commit_bytes(commit, mine)
        expires = time.time() + COMMIT_TTL_S
        took_part = set(commit.participants)
        followers = [p.record.peer_id for p in self._peers() if p.node_id not in took_part]
        self._bulletin.post(key, self._identity.public_key, signed, expires, to=followers, store=False)
        logger.info(
            f"round {attempt.round}: committed {commit.version[:12]} from {len(commit.updates)} updates, "
            f"{len(merged.participants)} participants, {len(signatures)} signatures"
        )
        return commit

    async def _collect_quorum(
        self, commit: Commit, mine: CommitSignature, until: float
    ) -> list[CommitSignature]:
        key = commits_key(commit.run_id, commit.round)
        keepers = [p.record.peer_id for p in self._peers() if p.record.role != "client"]
        signed, expires = signed_commit_bytes(commit, mine), time.time() + COMMIT_TTL_S
        # the DHT copy is for nodes that catch up later, and costs more than all the pushes: under
        # "ready" pacing only the first `quorum` participants' signatures (they make it whole), and only
        # if the commit is still the latest 2 s on (nodes that missed a round of a second get a notice)
        storer = self._identity.node_id in sorted(commit.participants)[: self._manifest.quorum]
        latest = lambda: storer and self._still_latest(commit.round)  # noqa: E731
        store = latest if self._manifest.pacing == "ready" else True
        self._bulletin.post(key, self._identity.public_key, signed, expires, to=keepers, store=store)
        quorum = self._manifest.quorum
        tracker = QuorumTracker(commit.run_id, commit.round, quorum)
        tracker.add(commit, mine)
        read_dht_at = time.time() + DHT_READ_S
        while True:
            if tracker.count(commit.id) >= quorum:
                return tracker.signatures(commit.id)
            if time.time() >= until:
                raise AttemptFailed(
                    f"only {tracker.count(commit.id)} of the quorum's {quorum} signatures on our merge in "
                    "time (other keepers late, offline, or merged to another version)"
                )
            posts = self._bulletin.posts(key)
            await self._bulletin.wait(key, min(read_dht_at, until) - time.time(), since=posts)
            network = time.time() >= read_dht_at
            if network:
                read_dht_at = time.time() + DHT_READ_S
            await self._read_commits(key, tracker, network)

    def _still_latest(self, round_: int) -> bool:
        latest = self._history.latest()
        return latest is None or latest.round <= round_

    async def _read_commits(self, key: str, tracker: QuorumTracker, network: bool = True) -> None:
        for item in (await self._bulletin.get(key, network=network)).values():
            with contextlib.suppress(CommitError):
                other, signature = parse_signed_commit(item.value)
                tracker.add(other, signature)

    async def catch_up(self, version: str, committed_round: int, state: dict[str, np.ndarray]) -> bool:
        """Move from ``version`` (of ``committed_round``) to the run's winning history when peers report
        another committed version; True if we moved (see the module docstring)."""
        others = [
            p for p in self._peers()
            if p.record.model_version and p.record.model_version != version
            and p.record.round >= committed_round + 1
        ]  # fmt: skip
        run_id = self._manifest.run_id
        # without a record that says so, only a notice pushed to us (no network read: this runs often)
        target_round = max(p.record.round for p in others) - 1 if others else committed_round + 1
        tracker = QuorumTracker(run_id, target_round, self._manifest.quorum)
        mine = self._history.get(target_round) if target_round == committed_round else None
        if mine is not None:
            for signature in self._history.signatures(target_round):
                tracker.add(mine, signature)
        await self._read_commits(commits_key(run_id, target_round), tracker, network=bool(others))
        commit = tracker.winner()
        if commit is None or commit.version == version:
            return False
        holders = [
            (p.record.peer_id, list(p.record.addrs))
            for p in self._peers()
            if p.record.model_version == commit.version
        ]
        signers = [peer_id_of(bytes.fromhex(s.node_id)) for s in tracker.signatures(commit.id)]
        known = {h for h, _ in holders} | {self._identity.peer_id}
        holders += [(peer_id, []) for peer_id in signers if peer_id not in known]
        self._status.phase = "syncing"
        new = await self._state.download(commit.version, commit.tensor_hashes, holders, have=state)
        if version_hash(new) != commit.version:  # every tensor matched, so this cannot happen
            raise AttemptFailed("downloaded state does not hash to the commit's version")
        switch = mine is not None
        before = self._history.get(commit.round - 1)
        orphaned = before is not None and before.version != commit.parent
        await asyncio.to_thread(self._persist, commit, tracker.signatures(commit.id), new, True)
        if orphaned:  # our V_{r-1} lost: the winning chain names another (History.record drops our row)
            self._status.fork_switches += 1
            logger.warning(
                f"round {commit.round - 1}: our commit {before.version[:12]} is not on the run's chain "
                f"(round {commit.round} builds on {commit.parent[:12]}); dropped from the history"
            )
        if switch:
            self._status.fork_switches += 1
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
        stored = self._versions.put(state, parent=commit.parent)  # a patch of it, if the store keeps chains
        if stored != commit.version:
            raise AttemptFailed(f"stored state hashes to {stored}, the commit says {commit.version}")
        self._history.record(commit, signatures, replace=replace)
        self._status.last_participants = list(commit.participants)
        self._on_committed(commit, state)
