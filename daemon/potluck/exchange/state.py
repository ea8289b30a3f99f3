"""Model state between nodes: serve the versions, the manifest and the recorded commits a node holds;
download a version from several holders at once, checking each tensor against a signed commit.

A download runs in two passes:

1. Pieces. Every holder that answers ``GetBulkTicket`` (the version's tensor list and a one-time ticket
   for its direct TCP channel, exchange/bulk.py) gets a worker; the tensors are split into byte ranges
   (``bulk.plan_pieces``) that the workers pull from one queue, so several holders share even one large
   tensor. A worker reads over the direct channel, or over libp2p (``GetTensor`` with a range) where
   the holder has none (client mode) or it cannot be reached. A tensor is hashed in a thread as soon
   as its last piece is in, while the others still arrive.
2. Whole tensors over libp2p, one worker per holder left: what pass 1 did not finish (holders without
   the ticket handler, holders that failed), and every tensor whose pieces did not hash to the commit.
   Once such a tensor's true bytes are in, the holders whose pieces differ from them are caught.

A holder that serves bytes that are not the commit's is dropped for the rest of the download and
counted; its work goes back to the queue for the remaining holders.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import numpy as np
from hivemind.p2p import P2PContext, PeerID

from potluck.exchange.bulk import BulkServer, listen_ip, tensor_view
from potluck.exchange.chunks import CHUNK_BYTES
from potluck.exchange.download import (
    TENSOR_HANDLER,
    TICKET_HANDLER,
    Download,
    SyncFailed,
    SyncProgress,
    SyncStats,
)
from potluck.hashing import tensor_hash, tensor_hashes, version_hash_of
from potluck.store.versions import VersionNotFound, VersionStore
from potluck.swarm import traffic
from potluck.swarm.host import SwarmHost
from potluck.v1 import exchange_pb2

logger = logging.getLogger(__name__)

MANIFEST_HANDLER = "potluck.v1.GetManifest"
COMMIT_HANDLER = "potluck.v1.GetCommit"

MAX_TICKET_BYTES = 1 << 20  # a ticket stays under p2pd's message limit; a longer tensor list: pass 2 only


class StateService:
    """Serves tensors of stored versions and the run's manifest; downloads versions from holders."""

    def __init__(
        self, host: SwarmHost, versions: VersionStore, manifest_bytes: Callable[[str], bytes | None]
    ):
        self._host, self._versions, self._manifest_bytes = host, versions, manifest_bytes
        self._cache: tuple[str, Mapping[str, np.ndarray]] | None = None  # last version served
        self._hashed: tuple[str, dict[str, str]] = ("", {})  # its tensor hashes, once asked for
        self.stats = SyncStats()
        self.progress = SyncProgress()  # the download under way (status; empty version: none)
        self.bulk: BulkServer | None = None  # the direct channel; None in client mode
        # how downloads run, for comparisons (bench/rounds.py): "bulk" (both passes, direct channels where
        # reachable), "pieces" (both passes, libp2p only), "whole" (pass 2 only: the path before pieces)
        self.mode = "bulk"
        # the recorded commit that made a version, and its signatures' bytes (GetCommit); None: not served
        self.commits: Callable[[str, str], tuple[bytes, list[bytes]] | None] | None = None

    async def start(self) -> None:
        p2p = self._host.p2p
        await p2p.add_protobuf_handler(
            TENSOR_HANDLER, self._serve_tensor, exchange_pb2.TensorRequest, stream_output=True
        )
        await p2p.add_protobuf_handler(MANIFEST_HANDLER, self._serve_manifest, exchange_pb2.ManifestRequest)
        await p2p.add_protobuf_handler(TICKET_HANDLER, self._serve_ticket, exchange_pb2.BulkTicketRequest)
        await p2p.add_protobuf_handler(COMMIT_HANDLER, self._serve_commit, exchange_pb2.CommitRequest)
        ip = listen_ip(self._host.listen)
        if not self._host.client_mode and ip is not None:
            bulk = BulkServer(self._load)
            counters = traffic.counters_of(self._host.p2p)
            if counters is not None:
                bulk.on_sent = lambda n: counters.add(traffic.DIRECT, sent=n)
            try:
                await bulk.start(ip)
                self.bulk = bulk
            except OSError as e:
                logger.warning(f"no direct bulk channel on {ip} ({e}): versions are served over libp2p only")

    async def stop(self) -> None:
        if self.bulk is not None:
            await self.bulk.stop()

    # ---- serving -----------------------------------------------------------------------------------

    def _load(self, version: str) -> Mapping[str, np.ndarray] | None:
        if self._cache is not None and self._cache[0] == version:
            return self._cache[1]
        try:
            state = self._versions.get(version)
        except (VersionNotFound, ValueError):
            return None
        self._cache = (version, state)
        return state

    def _hashes(self, version: str, state: Mapping[str, np.ndarray]) -> dict[str, str]:
        if self._hashed[0] != version:  # ~0.2 s per 400 MB; asked for once per newcomer at most
            self._hashed = (version, tensor_hashes(state))
        return self._hashed[1]

    async def _serve_tensor(
        self, request: exchange_pb2.TensorRequest, context: P2PContext
    ) -> AsyncIterator[exchange_pb2.TensorChunk]:
        state = (
            await asyncio.to_thread(self._load, request.version.hex()) if len(request.version) == 32 else None
        )
        array = state.get(request.name) if state is not None else None
        data = tensor_view(array) if array is not None else None
        end = (request.offset + request.length if request.length else data.nbytes) if data is not None else 0
        if data is None or data.nbytes == 0 or request.offset >= end or end > data.nbytes:
            yield exchange_pb2.TensorChunk(total_size=0)
            return
        offset = request.offset
        dtype = array.dtype.newbyteorder("<").str
        yield exchange_pb2.TensorChunk(
            dtype=dtype,
            shape=list(array.shape),
            total_size=data.nbytes,
            data=bytes(data[offset : min(end, offset + CHUNK_BYTES)]),
        )
        for start in range(offset + CHUNK_BYTES, end, CHUNK_BYTES):
            yield exchange_pb2.TensorChunk(data=bytes(data[start : min(end, start + CHUNK_BYTES)]))

    async def _serve_ticket(
        self, request: exchange_pb2.BulkTicketRequest, context: P2PContext
    ) -> exchange_pb2.BulkTicket:
        version = request.version.hex() if len(request.version) == 32 else ""
        state = await asyncio.to_thread(self._load, version) if version else None
        if state is None:
            return exchange_pb2.BulkTicket()
        hashes = await asyncio.to_thread(self._hashes, version, state) if request.hashes else {}
        tensors = [
            exchange_pb2.TensorMeta(
                name=name,
                dtype=a.dtype.newbyteorder("<").str,
                shape=list(a.shape),
                hash=bytes.fromhex(hashes.get(name, "")),
            )
            for name, a in sorted(state.items())
        ]
        if exchange_pb2.BulkTicket(tensors=tensors).ByteSize() > MAX_TICKET_BYTES:
            return exchange_pb2.BulkTicket()
        if self.bulk is None or not self.bulk.port:
            return exchange_pb2.BulkTicket(tensors=tensors)
        token = self.bulk.tickets.issue(context.remote_id.to_base58(), version)
        wildcard = ipaddress.ip_address(self.bulk.host).is_unspecified
        return exchange_pb2.BulkTicket(
            host="" if wildcard else self.bulk.host, port=self.bulk.port, token=token, tensors=tensors
        )

    async def _serve_manifest(
        self, request: exchange_pb2.ManifestRequest, context: P2PContext
    ) -> exchange_pb2.ManifestResponse:
        data = self._manifest_bytes(request.run_id.hex()) if len(request.run_id) == 32 else None
        return exchange_pb2.ManifestResponse(manifest=data or b"")

    async def _serve_commit(
        self, request: exchange_pb2.CommitRequest, context: P2PContext
    ) -> exchange_pb2.CommitReply:
        if self.commits is None or len(request.run_id) != 32 or len(request.version) != 32:
            return exchange_pb2.CommitReply()
        found = await asyncio.to_thread(self.commits, request.run_id.hex(), request.version.hex())
        if found is None:
            return exchange_pb2.CommitReply()
        return exchange_pb2.CommitReply(commit=found[0], signatures=found[1])

    # ---- fetching ----------------------------------------------------------------------------------

    async def _ask(
        self, peer_id: str, addrs: list[str], handler: str, request: Any, reply: Any, timeout: float
    ) -> Any:
        """One unary call to a holder, dialled at ``addrs`` first; None (logged) when it fails."""
        try:
            peer = PeerID.from_base58(peer_id)
            if addrs:
                await self._host.connect(peer, addrs)
            call = self._host.p2p.call_protobuf_handler(peer, handler, request, reply)
            return await asyncio.wait_for(call, timeout)
        except Exception as e:
            logger.debug(f"{handler} from {peer_id}: {type(e).__name__}: {e}")
            return None

    async def fetch_manifest(self, run_id: str, holders: Sequence[tuple[str, list[str]]]) -> bytes:
        """The manifest bytes of ``run_id`` from the first holder that has them (the caller checks them)."""
        request = exchange_pb2.ManifestRequest(run_id=bytes.fromhex(run_id))
        for peer_id, addrs in holders:
            reply = await self._ask(
                peer_id, addrs, MANIFEST_HANDLER, request, exchange_pb2.ManifestResponse, 10
            )
            if reply is not None and reply.manifest:
                return reply.manifest
        raise SyncFailed(f"no peer served the manifest of run {run_id[:16]}")

    async def fetch_commit(
        self, run_id: str, version: str, holders: Sequence[tuple[str, list[str]]]
    ) -> list[tuple[bytes, list[bytes]]]:
        """Every holder's answer (commit body, signatures) for the commit that made ``version``, unchecked:
        the caller checks each against the run, the version and the quorum."""
        request = exchange_pb2.CommitRequest(run_id=bytes.fromhex(run_id), version=bytes.fromhex(version))
        replies = await asyncio.gather(
            *(self._ask(p, a, COMMIT_HANDLER, request, exchange_pb2.CommitReply, 10) for p, a in holders)
        )
        return [(r.commit, list(r.signatures)) for r in replies if r is not None and r.commit]

    async def fetch_version(
        self, version: str, holders: Sequence[tuple[str, list[str]]]
    ) -> dict[str, np.ndarray]:
        """The state of ``version`` when all this node knows of it is its hash (a run's pre-trained
        genesis): the first holder's tensor list whose hashes make up ``version``, then the download."""
        request = exchange_pb2.BulkTicketRequest(version=bytes.fromhex(version), hashes=True)
        for peer_id, addrs in holders:
            reply = await self._ask(peer_id, addrs, TICKET_HANDLER, request, exchange_pb2.BulkTicket, 30)
            if reply is None:
                continue
            expected = {t.name: t.hash.hex() for t in reply.tensors}
            if expected and version_hash_of(expected) == version:
                return await self.download(version, expected, holders)
            if reply.tensors:  # a list that is not the version's: a broken or lying holder
                logger.warning(f"peer {peer_id[-8:]} listed tensors that do not make up {version[:12]}")
        raise SyncFailed(f"no peer listed the tensors of version {version[:12]}")

    async def download(
        self,
        version: str,
        expected: Mapping[str, str],
        holders: Sequence[tuple[str, list[str]]],
        have: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """The state of ``version``: tensors in ``have`` whose hash matches are reused, the rest are
        fetched from ``holders`` in the two passes of the module docstring, each checked against
        ``expected`` (name -> hash)."""
        state: dict[str, np.ndarray] = {}
        todo = []
        for name in sorted(expected):
            local = (have or {}).get(name)
            if local is not None and tensor_hash(local) == expected[name]:
                state[name] = local
                self.stats.tensors_reused += 1
            else:
                todo.append(name)
        if not todo:
            return state
        if not holders:
            raise SyncFailed(f"nobody holds version {version[:12]}")
        progress = self.progress = SyncProgress(version, time.time())
        run = Download(
            self._host, self.stats, version, expected, holders, state, self.mode == "bulk", progress
        )
        began, before, direct = time.monotonic(), self.stats.bytes_downloaded, self.stats.bytes_direct
        try:
            if self.mode != "whole":
                await run.pieces(todo)
            rest = [name for name in todo if name not in state]
            if rest:
                await run.whole(rest)
        finally:
            if self.progress is progress:  # not a later download's
                self.progress = SyncProgress()
        logger.info(
            f"synced {version[:12]}: {len(todo)} tensors, {self.stats.bytes_downloaded - before} bytes "
            f"({self.stats.bytes_direct - direct} direct) from {len(run.live)} of {len(holders)} holders "
            f"in {time.monotonic() - began:.2f}s"
        )
        return state
