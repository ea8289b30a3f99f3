"""Hostile peers for tests: byte-level forgeries that the shipped code must reject. Not shipped."""

from __future__ import annotations

import msgpack
from hivemind.utils.serializer import MSGPackSerializer

DICTIONARY_EXT = 0x50  # hivemind's DictionaryDHTValue ext type code


def nested_dictionary_value(levels: int) -> bytes:
    """A DictionaryDHTValue whose only entry is a DictionaryDHTValue ... `levels` deep.

    ~30 bytes a level: 200 levels (6 KB) overflow the C stack of an unguarded hivemind DHT process.
    """
    payload = MSGPackSerializer.dumps([1, 2.0, []])
    for _ in range(levels):
        payload = msgpack.packb(
            msgpack.ExtType(
                DICTIONARY_EXT,
                msgpack.packb([1, 2.0, [[b"k", msgpack.ExtType(DICTIONARY_EXT, payload), 3.0]]]),
            )
        )
    return payload


async def lying_holder(
    bootstrap: str, run: str, announced: str, round_: int, author: bytes, served: bytes, workdir, done
) -> None:
    """A node that announces it holds update ``announced`` and serves ``served`` instead, until ``done()``.

    It speaks the real protocol (its own Ed25519 identity, a signed announcement, our stream handler),
    so only the id check on the received bytes can catch it.
    """
    import asyncio
    import time

    from hivemind.dht import DHT
    from hivemind.p2p import P2P, PeerID
    from hivemind.utils import get_dht_time
    from hivemind.utils.multiaddr import Multiaddr

    from potluck.exchange.announcements import Announcement, updates_key
    from potluck.exchange.service import HANDLER
    from potluck.identity import P2P_KEY_FILE, load_or_create
    from potluck.v1 import exchange_pb2

    workdir.mkdir(parents=True, exist_ok=True)
    identity = load_or_create(workdir)
    p2p = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], identity_path=str(workdir / P2P_KEY_FILE))
    target = Multiaddr(bootstrap)
    await p2p._client.connect(PeerID.from_base58(target["p2p"]), [Multiaddr(bootstrap.split("/p2p/")[0])])
    dht = DHT(p2p=p2p, initial_peers=[bootstrap], start=True)

    async def serve(request, context):
        yield exchange_pb2.UpdateChunk(total_size=len(served), data=served)

    await p2p.add_protobuf_handler(HANDLER, serve, exchange_pb2.UpdateRequest, stream_output=True)
    value = Announcement(
        announced, round_, author, len(served), (identity.peer_id,), identity.public_key, time.time()
    )
    try:
        await dht.store(
            updates_key(run, round_),
            value.sign(identity),
            get_dht_time() + 60,
            subkey=announced.encode(),
            return_future=True,
        )
        while not await asyncio.to_thread(done):
            await asyncio.sleep(0.5)
    finally:
        dht.shutdown()
        await p2p.shutdown()


async def serve_tampered_tensors(p2p, state) -> None:
    """Answer GetTensor for any version with ``state``'s tensors, one byte flipped in each."""
    import numpy as np

    from potluck.exchange.state import TENSOR_HANDLER
    from potluck.v1 import exchange_pb2

    async def serve(request, context):
        array = np.ascontiguousarray(state[request.name])
        data = bytearray(array.tobytes())
        data[0] ^= 0x01
        yield exchange_pb2.TensorChunk(
            dtype=array.dtype.str, shape=list(array.shape), total_size=len(data), data=bytes(data)
        )

    await p2p.add_protobuf_handler(TENSOR_HANDLER, serve, exchange_pb2.TensorRequest, stream_output=True)
