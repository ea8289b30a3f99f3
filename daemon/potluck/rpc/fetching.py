"""The control API's FetchVersion: a stream of progress replies while the node fetches an old version of
its run (engine/archive.py pins it to a quorum-signed commit, downloads, checks and stores it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from potluck.engine import archive
from potluck.exchange.state import StateService
from potluck.manifest import Manifest
from potluck.store.history import History
from potluck.store.versions import VersionStore
from potluck.swarm.bulletin import Bulletin
from potluck.swarm.membership import Membership
from potluck.v1 import control_pb2

PROGRESS_EVERY_S = 0.5
Reply = control_pb2.FetchVersionReply


class ArchiveParts(Protocol):
    """The parts of a running node a fetch uses (potluck.node.Node has them)."""

    manifest: Manifest | None
    history: History | None
    bulletin: Bulletin | None
    state_service: StateService | None
    membership: Membership | None
    versions: VersionStore


def _is_hash(text: str) -> bool:
    return len(text) == 64 and not text.strip("0123456789abcdef")


async def fetch_version(node: ArchiveParts, request: control_pb2.FetchVersionRequest) -> AsyncIterator[Reply]:
    """Progress replies every PROGRESS_EVERY_S while the download runs, then one with ``done``."""
    service, membership, bulletin = node.state_service, node.membership, node.bulletin
    if node.manifest is None or service is None or membership is None or bulletin is None:
        yield Reply(done=True, reason="not_ready", error="this node has not fetched its run's manifest yet")
        return
    if (request.version and not _is_hash(request.version)) or (not request.version and request.round < 0):
        yield Reply(done=True, reason="unknown_version", error="give a version's full hash or a round >= 0")
        return
    try:
        pinned = await archive.pin(node.manifest, node.history, bulletin, request.version, request.round)
    except archive.ArchiveError as e:
        yield Reply(done=True, reason=e.reason, error=str(e))
        return
    parent = pinned.commit.parent if pinned.commit is not None else ""
    which = {"version": pinned.version, "round": pinned.round, "parent": parent}
    before = service.stats.bytes_downloaded
    task = asyncio.ensure_future(archive.fetch(pinned, service, node.versions, membership.peers))
    try:
        while not (await asyncio.wait({task}, timeout=PROGRESS_EVERY_S))[0]:
            p = service.progress
            mine = p.version == pinned.version
            yield Reply(**which, bytes=p.bytes if mine else 0, target_bytes=p.target_bytes if mine else 0)
    finally:
        if not task.done():  # the client went away
            task.cancel()
    try:
        holders = task.result()
    except archive.ArchiveError as e:
        yield Reply(done=True, **which, reason=e.reason, error=str(e))
        return
    got = service.stats.bytes_downloaded - before
    yield Reply(done=True, **which, fetched=holders > 0, holders=holders, bytes=got, target_bytes=got)
