"""An old version of the run fetched for inspection (`potluck diff` or `show` of a version this node does
not store: dropped by `gc`, or committed before this node joined): the control API's FetchVersion.

The version is pinned by a quorum-signed commit before a byte is asked for: the commit of its round in
this node's history (its signatures were checked when it was recorded), else the run's signed copies of
that round's commit in the DHT, counted by :class:`QuorumTracker` against the manifest's quorum (the fork
choice's winner; they stay there COMMIT_TTL_S). The genesis is pinned by the signed manifest. The
tensors come from every live peer of the run (any of them may still store it), each checked against the
commit's tensor hash as a catch-up checks them (exchange/state.py), and the version is stored here
(versions/, a patch of its parent where the store keeps chains) so it is fetched once. No history row is
written: the history stays the chain this node took part in, and `gc` drops such versions again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from potluck.engine.commit import commits_key, parse_signed_commit
from potluck.exchange.download import SyncFailed
from potluck.exchange.state import StateService
from potluck.hashing import version_hash
from potluck.manifest import Manifest
from potluck.rounds.commit import Commit, CommitError, QuorumTracker
from potluck.store.history import History
from potluck.store.versions import VersionStore
from potluck.swarm.bulletin import Bulletin
from potluck.swarm.membership import PeerInfo

__all__ = ["FETCH_TIMEOUT_S", "ArchiveError", "Pinned", "fetch", "pin"]

FETCH_TIMEOUT_S = 600.0  # one version's download; a holder that stalls is dropped well before


class ArchiveError(Exception):
    """Why a version cannot be fetched: a reason code (FetchVersionReply.reason) and one line."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Pinned:
    """A version and what vouches for it: its round's commit (None: the run's genesis)."""

    version: str
    round: int  # -1: the genesis
    commit: Commit | None


async def pin(
    manifest: Manifest, history: History | None, bulletin: Bulletin, version: str, round_: int
) -> Pinned:
    """The version named by ``version`` (a full hash, or "" for round ``round_``'s) and its commit;
    :class:`ArchiveError` when no recorded or quorum-signed commit names it."""
    if version and version == manifest.genesis:
        return Pinned(version, -1, None)
    if round_ < 0:  # by hash alone: only a commit this node recorded can name it
        rows = history.log() if history is not None else []
        matches = [e["round"] for e in rows if e["version"] == version]
        if not matches:
            raise ArchiveError("unknown_version", f"version {version[:16]} is in no commit recorded here")
        round_ = matches[0]
    commit = history.get(round_) if history is not None else None
    if commit is None:
        tracker = QuorumTracker(manifest.run_id, round_, manifest.quorum)
        for item in (await bulletin.get(commits_key(manifest.run_id, round_))).values():
            with contextlib.suppress(CommitError):
                tracker.add(*parse_signed_commit(item.value))
        commit = tracker.winner()
        if commit is None:
            raise ArchiveError(
                "unknown_version",
                f"no commit of round {round_} with the quorum's {manifest.quorum} signatures is recorded "
                "here or found in the DHT",
            )
    if version and commit.version != version:
        raise ArchiveError(
            "unknown_version", f"round {round_} committed {commit.version[:16]}, not {version[:16]}"
        )
    return Pinned(commit.version, round_, commit)


async def fetch(
    pinned: Pinned, state_service: StateService, versions: VersionStore, peers: Callable[[], list[PeerInfo]]
) -> int:
    """Download ``pinned`` from the run's live peers, check it, store it; the number of peers asked
    (0: it was stored here already). :class:`ArchiveError` when nobody served it or its bytes did not
    verify."""
    if versions.has(pinned.version):
        return 0
    holders = [(p.record.peer_id, list(p.record.addrs)) for p in peers()]
    if not holders:
        raise ArchiveError("no_holder", "no peer of the run is online to serve it")
    bad_before = state_service.stats.bad_tensors
    try:
        if pinned.commit is None:
            fetching = state_service.fetch_version(pinned.version, holders)
            state = await asyncio.wait_for(fetching, FETCH_TIMEOUT_S)
        else:
            expected = pinned.commit.tensor_hashes
            state = await asyncio.wait_for(
                state_service.download(pinned.version, expected, holders), FETCH_TIMEOUT_S
            )
    except (SyncFailed, TimeoutError) as e:
        bad = state_service.stats.bad_tensors - bad_before
        if bad:
            raise ArchiveError(
                "not_verified",
                f"{bad} tensor(s) served for {pinned.version[:16]} did not hash to its commit, and no "
                "peer served the true bytes",
            ) from None
        why = "timed out" if isinstance(e, TimeoutError) else str(e)
        raise ArchiveError(
            "no_holder",
            f"none of the {len(holders)} online peer(s) served version {pinned.version[:16]} ({why})",
        ) from None
    if version_hash(state) != pinned.version:  # every tensor matched its hash: cannot happen
        raise ArchiveError("not_verified", f"the downloaded state does not hash to {pinned.version[:16]}")
    parent = pinned.commit.parent if pinned.commit is not None else None
    await asyncio.to_thread(versions.put, state, parent)
    return len(holders)
