"""Model state over libp2p: serve the versions and the manifest a node holds; download a version
tensor by tensor from several holders at once, checking each tensor against a signed commit.

A holder that serves a tensor whose hash is not the commit's is dropped for the rest of the download
and counted; its tensors go back to the queue for the remaining holders.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from hivemind.p2p import P2PContext, PeerID

from potluck.exchange.chunks import CHUNK_BYTES
from potluck.hashing import tensor_hash
from potluck.store.versions import VersionNotFound, VersionStore
from potluck.swarm.host import SwarmHost
from potluck.v1 import exchange_pb2

logger = logging.getLogger(__name__)

TENSOR_HANDLER = "potluck.v1.GetTensor"
MANIFEST_HANDLER = "potluck.v1.GetManifest"

TENSOR_TIMEOUT_S = 120.0
MAX_TENSOR_BYTES = 16 << 30
_DTYPES = {"<f4", "<f8", "<f2", "<i8", "<i4", "<i2", "|i1", "|u1", "|b1", "<u2", "<u4", "<u8"}


class SyncFailed(Exception):
    pass


@dataclass
class SyncStats:
    tensors_downloaded: int = 0
    tensors_reused: int = 0
    bad_tensors: int = 0  # tensors whose bytes did not match the commit: their holder was dropped
    bytes_downloaded: int = 0


class StateService:
    """Serves tensors of stored versions and the run's manifest; downloads versions from holders."""

    def __init__(
        self, host: SwarmHost, versions: VersionStore, manifest_bytes: Callable[[str], bytes | None]
    ):
        self._host, self._versions, self._manifest_bytes = host, versions, manifest_bytes
        self._cache: tuple[str, Mapping[str, np.ndarray]] | None = None  # last version served
        self.stats = SyncStats()

    async def start(self) -> None:
        p2p = self._host.p2p
        await p2p.add_protobuf_handler(
            TENSOR_HANDLER, self._serve_tensor, exchange_pb2.TensorRequest, stream_output=True
        )
        await p2p.add_protobuf_handler(MANIFEST_HANDLER, self._serve_manifest, exchange_pb2.ManifestRequest)

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

    async def _serve_tensor(
        self, request: exchange_pb2.TensorRequest, context: P2PContext
    ) -> AsyncIterator[exchange_pb2.TensorChunk]:
        state = (
            await asyncio.to_thread(self._load, request.version.hex()) if len(request.version) == 32 else None
        )
        array = state.get(request.name) if state is not None else None
        if array is None:
            yield exchange_pb2.TensorChunk(total_size=0)
            return
        array = np.ascontiguousarray(array)
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        dtype = array.dtype.newbyteorder("<").str
        yield exchange_pb2.TensorChunk(
            dtype=dtype, shape=list(array.shape), total_size=len(data), data=data[:CHUNK_BYTES]
        )
        for offset in range(CHUNK_BYTES, len(data), CHUNK_BYTES):
            yield exchange_pb2.TensorChunk(data=data[offset : offset + CHUNK_BYTES])

    async def _serve_manifest(
        self, request: exchange_pb2.ManifestRequest, context: P2PContext
    ) -> exchange_pb2.ManifestResponse:
        data = self._manifest_bytes(request.run_id.hex()) if len(request.run_id) == 32 else None
        return exchange_pb2.ManifestResponse(manifest=data or b"")

    # ---- fetching ----------------------------------------------------------------------------------

    async def fetch_manifest(self, run_id: str, holders: Sequence[tuple[str, list[str]]]) -> bytes:
        """The manifest bytes of ``run_id`` from the first holder that has them (the caller checks them)."""
        for peer_id, addrs in holders:
            try:
                peer = PeerID.from_base58(peer_id)
                if addrs:
                    await self._host.connect(peer, addrs)
                reply = await asyncio.wait_for(
                    self._host.p2p.call_protobuf_handler(
                        peer,
                        MANIFEST_HANDLER,
                        exchange_pb2.ManifestRequest(run_id=bytes.fromhex(run_id)),
                        exchange_pb2.ManifestResponse,
                    ),
                    10,
                )
            except Exception as e:
                logger.debug(f"manifest from {peer_id}: {type(e).__name__}: {e}")
                continue
            if reply.manifest:
                return reply.manifest
        raise SyncFailed(f"no peer served the manifest of run {run_id[:16]}")

    async def download(
        self,
        version: str,
        expected: Mapping[str, str],
        holders: Sequence[tuple[str, list[str]]],
        have: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """The state of ``version``: tensors in ``have`` whose hash matches are reused, the rest are
        fetched in parallel, one worker per holder, each checked against ``expected`` (name -> hash)."""
        state: dict[str, np.ndarray] = {}
        queue: asyncio.Queue[str] = asyncio.Queue()
        for name in sorted(expected):
            local = (have or {}).get(name)
            if local is not None and tensor_hash(local) == expected[name]:
                state[name] = local
                self.stats.tensors_reused += 1
            else:
                queue.put_nowait(name)
        if queue.empty():
            return state
        if not holders:
            raise SyncFailed(f"nobody holds version {version[:12]}")
        live = {peer_id for peer_id, _ in holders}

        async def worker(peer_id: str, addrs: list[str]) -> None:
            peer = PeerID.from_base58(peer_id)
            if addrs:
                try:
                    await self._host.connect(peer, addrs)
                except Exception:
                    live.discard(peer_id)
                    return
            while peer_id in live:
                try:
                    name = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    array = await asyncio.wait_for(self._fetch_tensor(peer, version, name), TENSOR_TIMEOUT_S)
                except Exception as e:
                    logger.info(f"holder {peer_id} failed to serve {name}: {type(e).__name__}: {e}")
                    live.discard(peer_id)
                    queue.put_nowait(name)
                    return
                if await asyncio.to_thread(tensor_hash, array) != expected[name]:
                    self.stats.bad_tensors += 1
                    logger.warning(
                        f"holder {peer_id} served a wrong {name!r} for {version[:12]}: dropping it"
                    )
                    live.discard(peer_id)
                    queue.put_nowait(name)
                    return
                state[name] = array
                self.stats.tensors_downloaded += 1

        while not queue.empty():
            if not live:
                raise SyncFailed(f"every holder of {version[:12]} failed or lied")
            await asyncio.gather(*(worker(p, a) for p, a in holders if p in live))
        return state

    async def _fetch_tensor(self, peer: PeerID, version: str, name: str) -> np.ndarray:
        request = exchange_pb2.TensorRequest(version=bytes.fromhex(version), name=name)
        stream = await self._host.p2p.iterate_protobuf_handler(
            peer, TENSOR_HANDLER, request, exchange_pb2.TensorChunk
        )
        buffer, header = bytearray(), None
        async for chunk in stream:
            if header is None:
                if chunk.total_size == 0:
                    raise SyncFailed("holder does not have it")
                if chunk.dtype not in _DTYPES or len(chunk.shape) > 8:
                    raise SyncFailed(f"bad tensor header {chunk.dtype!r}")
                expected = np.dtype(chunk.dtype).itemsize * math.prod(chunk.shape)
                if chunk.total_size != expected or expected > MAX_TENSOR_BYTES:
                    raise SyncFailed("tensor size does not match its shape")
                header = chunk
            buffer += chunk.data
            if len(buffer) > header.total_size:
                raise SyncFailed("holder sent more than it declared")
        if header is None or len(buffer) != header.total_size:
            raise SyncFailed("truncated tensor")
        self.stats.bytes_downloaded += len(buffer)
        return np.frombuffer(bytes(buffer), dtype=np.dtype(header.dtype)).reshape(tuple(header.shape)).copy()
