"""Slice results over libp2p: a reducer serves its signed slice of an aggregation attempt; the other
participants fetch it (rounds/slices.py checks and audits what they get)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence

from hivemind.p2p import P2PContext, PeerID

from potluck.exchange.chunks import BadStream, NotHeld, chunked, received
from potluck.identity import peer_id_of
from potluck.swarm.host import SwarmHost
from potluck.v1 import exchange_pb2

HANDLER = "potluck.v1.GetSlice"
KEEP = 8  # attempts whose slices stay served (a slow peer may still be fetching an old one)
RETRY_S = 0.2


class SliceUnavailable(Exception):
    pass


class SliceService:
    def __init__(self, host: SwarmHost, run_id: str) -> None:
        self._host, self._run = host, bytes.fromhex(run_id)
        self._offered: OrderedDict[tuple[int, int], bytes] = OrderedDict()

    async def start(self) -> None:
        await self._host.p2p.add_protobuf_handler(
            HANDLER, self._serve, exchange_pb2.SliceRequest, stream_output=True
        )

    def offer(self, round_: int, attempt: int, data: bytes) -> None:
        self._offered[(round_, attempt)] = data
        while len(self._offered) > KEEP:
            self._offered.popitem(last=False)

    async def _serve(
        self, request: exchange_pb2.SliceRequest, context: P2PContext
    ) -> AsyncIterator[exchange_pb2.UpdateChunk]:
        data = self._offered.get((request.round, request.attempt)) if request.run_id == self._run else None
        for chunk in chunked(data):
            yield chunk

    async def fetch(
        self, reducer: bytes, addrs: Sequence[str], round_: int, attempt: int, limit: int, until: float
    ) -> bytes:
        """The reducer's slice bytes, asking again while it is still computing, until ``until``."""
        peer = PeerID.from_base58(peer_id_of(reducer))
        if addrs:
            await self._host.connect(peer, list(addrs))
        request = exchange_pb2.SliceRequest(run_id=self._run, round=round_, attempt=attempt)
        last = "no answer"
        while time.time() < until:
            try:
                stream = await self._host.p2p.iterate_protobuf_handler(
                    peer, HANDLER, request, exchange_pb2.UpdateChunk
                )
                data = await asyncio.wait_for(received(stream, limit), until - time.time())
            except (NotHeld, BadStream) as e:
                last = "not computed yet" if isinstance(e, NotHeld) else str(e)
            except TimeoutError:
                break
            except Exception as e:  # a transport error: the reducer may be restarting its stream
                last = f"{type(e).__name__}: {e}"
            else:
                return data
            await asyncio.sleep(min(RETRY_S, max(0.0, until - time.time() - 0.02)))  # one last ask in time
        raise SliceUnavailable(f"slice of {peer_id_of(reducer)[:16]}: {last}")
