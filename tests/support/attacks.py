"""Hostile peers for tests: byte-level forgeries that the shipped code must reject. Not shipped."""

from __future__ import annotations

import functools

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


async def _join(bootstrap: str, workdir):
    """``(identity, p2p, dht)`` of a bare peer (its key in ``workdir``) that dialled ``bootstrap``."""
    from hivemind.dht import DHT
    from hivemind.p2p import P2P, PeerID
    from hivemind.utils.multiaddr import Multiaddr

    from potluck.identity import P2P_KEY_FILE, load_or_create

    workdir.mkdir(parents=True, exist_ok=True)
    identity = load_or_create(workdir)
    p2p = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], identity_path=str(workdir / P2P_KEY_FILE))
    target = Multiaddr(bootstrap)
    await p2p._client.connect(PeerID.from_base58(target["p2p"]), [Multiaddr(bootstrap.split("/p2p/")[0])])
    return identity, p2p, DHT(p2p=p2p, initial_peers=[bootstrap], start=True)


async def lying_holder(
    bootstrap: str, run: str, announced: str, round_: int, author: bytes, served: bytes, workdir, done
) -> None:
    """A node that announces it holds update ``announced`` and serves ``served`` instead, until ``done()``.

    It speaks the real protocol (its own Ed25519 identity, a signed announcement, our stream handler),
    so only the id check on the received bytes can catch it.
    """
    import asyncio
    import time

    from hivemind.utils import get_dht_time

    from potluck.exchange.announcements import Announcement, updates_key
    from potluck.exchange.service import HANDLER
    from potluck.v1 import exchange_pb2

    identity, p2p, dht = await _join(bootstrap, workdir)

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


def run_lying_holder(
    bootstrap: str,
    run: str,
    announced: str,
    round_: int,
    author: bytes,
    served: bytes,
    workdir,
    victim_rpc: str,
    caught_after: int,
) -> None:
    """:func:`lying_holder` until the victim (control API ``victim_rpc``) counts more than
    ``caught_after`` bad holder fetches. Run it with support.spawned.run_spawned."""
    import asyncio

    done = functools.partial(_bad_fetches_above, victim_rpc, caught_after)
    asyncio.run(lying_holder(bootstrap, run, announced, round_, author, served, workdir, done))


def _bad_fetches_above(rpc_address: str, count: int) -> bool:
    from potluck.rpc.client import ControlClient

    with ControlClient(rpc_address, timeout=5.0) as client:
        return client.status().bad_holder_fetches > count


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


async def serve_lying_tensor_list(p2p, state) -> None:
    """Answer GetBulkTicket for any version with ``state``'s tensor list and hashes (another version's)."""
    from potluck.exchange.state import TICKET_HANDLER
    from potluck.hashing import tensor_hashes
    from potluck.v1 import exchange_pb2

    hashes = tensor_hashes(state)

    async def serve(request, context):
        return exchange_pb2.BulkTicket(
            tensors=[
                exchange_pb2.TensorMeta(
                    name=n, dtype=a.dtype.str, shape=list(a.shape), hash=bytes.fromhex(hashes[n])
                )
                for n, a in sorted(state.items())
            ]
        )

    await p2p.add_protobuf_handler(TICKET_HANDLER, serve, exchange_pb2.BulkTicketRequest)


def _attacker_dht(bootstrap: str, validators=()):
    from hivemind.dht import DHT

    return DHT(
        initial_peers=[bootstrap],
        start=True,
        record_validators=validators,
        host_maddrs=["/ip4/127.0.0.1/tcp/0"],
    )


async def _store_nested(target_peer_id: str, levels: int, _dht, node) -> str:
    from hivemind.dht.routing import DHTID
    from hivemind.p2p import PeerID
    from hivemind.proto import dht_pb2
    from hivemind.utils import get_dht_time

    request = dht_pb2.StoreRequest(
        keys=[DHTID.generate(source="attack").to_bytes()],
        subkeys=[node.protocol.IS_DICTIONARY],
        values=[nested_dictionary_value(levels)],
        expiration_time=[get_dht_time() + 30],
        in_cache=[False],
        peer=node.protocol.node_info,
    )
    try:
        await node.protocol.get_stub(PeerID.from_base58(target_peer_id)).rpc_store(request, timeout=5)
        return "stored"
    except Exception as e:
        return type(e).__name__


def store_nested_value(bootstrap: str, target_peer_id: str, levels: int) -> str:
    """One raw ``rpc_store`` of a dictionary value nested ``levels`` deep to ``target_peer_id``, from a
    plain hivemind DHT peer: "stored" if the target took it, else the name of the error it caused.
    Run it with support.spawned.run_spawned (it starts a DHT of its own)."""
    attacker = _attacker_dht(bootstrap)
    try:
        return attacker.run_coroutine(functools.partial(_store_nested, target_peer_id, levels))
    finally:
        attacker.shutdown()


def forge_peer_records(
    bootstrap: str, victim_key: bytes, victim_peer_id: str, mallory_pem: bytes, ttl: float
) -> bool:
    """Store forged peer records of run "default" from a hivemind DHT peer whose validator signs as the
    forgery needs (so the bytes on the wire are exactly the forgery): the victim's record signed by
    Mallory, an unsigned one, an oversized one, Mallory's genuine record (sequence 2000) and a replay of
    an older one. Returns whether the genuine store succeeded. Run it with support.spawned.run_spawned."""
    import multiprocessing
    import time

    from hivemind.dht.validation import DHTRecord, RecordValidatorBase
    from hivemind.utils import get_dht_time

    from potluck.identity import NodeIdentity
    from potluck.swarm.records import PeerRecord, peers_key, subkey_for
    from potluck.swarm.validator import PeerRecordValidator, RejectionCounters

    mallory = NodeIdentity.from_pem(mallory_pem)
    honest_signer = PeerRecordValidator(mallory, "default", RejectionCounters())
    modes = ["raw", "mallory-signs-victim", "genuine"]
    mode = multiprocessing.get_context("fork").Value("i", 0)  # shared with the DHT's forked process

    class Forger(RecordValidatorBase):
        def validate(self, record: DHTRecord) -> bool:
            return True

        def sign_value(self, record: DHTRecord) -> bytes:
            if modes[mode.value] == "mallory-signs-victim":  # victim's subkey, mallory's signature
                as_mallory = DHTRecord(
                    record.key,
                    msgpack.packb(subkey_for(mallory.public_key)),
                    record.value,
                    record.expiration_time,
                )
                return honest_signer.sign_value(as_mallory)
            if modes[mode.value] == "genuine":  # mallory's own record, correctly signed
                return honest_signer.sign_value(record)
            return record.value  # unsigned / oversized: raw bytes

    def record(identity: NodeIdentity, sequence: int, **kw) -> bytes:
        fields = dict(
            peer_id=identity.peer_id, addrs=(), role="keeper", agent="evil", round=0, model_version="",
            timestamp=time.time(), sequence=sequence,
        )  # fmt: skip
        return PeerRecord(**{**fields, **kw}).encode()

    attacker = _attacker_dht(bootstrap, [Forger()])
    key = peers_key("default")

    def store(how: str, subkey_owner: bytes, value: bytes, ttl: float = ttl) -> bool:
        mode.value = modes.index(how)
        future = attacker.store(
            key, value, get_dht_time() + ttl, subkey=subkey_for(subkey_owner), return_future=True
        )
        return bool(future.result(timeout=20))

    try:
        store(
            "mallory-signs-victim",
            victim_key,
            record(NodeIdentity.generate(), 10**18, peer_id=victim_peer_id),
        )
        store("raw", victim_key, record(mallory, 1))  # unsigned
        store("raw", mallory.public_key, b"\x00" * 8000)  # oversized (below hivemind's 16 KiB hazard)
        genuine = store("genuine", mallory.public_key, record(mallory, 2000, addrs=("/ip4/6.6.6.6/tcp/1",)))
        store("genuine", mallory.public_key, record(mallory, 1000), ttl=ttl + 30)  # replay of an older record
        return genuine
    finally:
        attacker.shutdown()


def store_values(bootstrap: str, key: str, items: list[tuple[bytes, bytes]], ttl: float) -> list[bool]:
    """Store raw ``(subkey, value)`` pairs under ``key`` from a plain hivemind DHT peer (no validator
    of ours signs or checks them): whether a read of ``key`` across the DHT then finds each. Not
    hivemind's store result: that is the answer of whichever replica answered last (hivemind/dht/
    node.py ``store_many``), False now and then though others stored it. Run it with
    support.spawned.run_spawned."""
    from hivemind.utils import get_dht_time

    attacker = _attacker_dht(bootstrap)
    try:
        for subkey, value in items:
            attacker.store(key, value, get_dht_time() + ttl, subkey=subkey)
        found = attacker.get(key, latest=True)
        held = found.value if found is not None and isinstance(found.value, dict) else {}
        return [subkey in held and held[subkey].value == value for subkey, value in items]
    finally:
        attacker.shutdown()


async def module_peddler(bootstrap: str, run: str, offers: list, workdir, done) -> None:
    """A peer that announces modules and serves bytes for them, until ``done()``. ``offers``: tuples
    ``(announced id, name, author, served bytes)``; the bytes may be a forged record (its own id
    announced, so only the record checks catch it) or another record's (only the id check does).

    It speaks the real protocol (its own identity, signed announcements in the DHT, our handler)."""
    import asyncio
    import time

    from hivemind.utils import get_dht_time

    from potluck.exchange.modules import HANDLER
    from potluck.modules.announce import ModuleAnnouncement, modules_key
    from potluck.v1 import exchange_pb2

    identity, p2p, dht = await _join(bootstrap, workdir)
    served = {bytes.fromhex(uid): data for uid, _, _, data in offers}

    async def serve(request, context):
        data = served.get(request.module_id, b"")
        yield exchange_pb2.UpdateChunk(total_size=len(data), data=data)

    await p2p.add_protobuf_handler(HANDLER, serve, exchange_pb2.ModuleRequest, stream_output=True)
    try:
        for uid, name, author, data in offers:
            a = ModuleAnnouncement(uid, name, author, 1, len(data), (identity.peer_id,), identity.public_key,
                                   time.time())  # fmt: skip
            await dht.store(modules_key(run), a.sign(identity), get_dht_time() + 60, subkey=uid.encode(),
                            return_future=True)  # fmt: skip
        while not await asyncio.to_thread(done):
            await asyncio.sleep(0.5)
    finally:
        dht.shutdown()
        await p2p.shutdown()


def run_module_peddler(
    bootstrap: str, run: str, offers: list, workdir, victim_rpc: str, refused: int
) -> None:
    """:func:`module_peddler` until the victim (control API ``victim_rpc``) has refused ``refused``
    module records in all and counted a holder that served the wrong bytes, if any offer is such.
    Run it with support.spawned.run_spawned."""
    import asyncio
    import hashlib

    lying = any(hashlib.sha256(data).hexdigest() != uid for uid, _, _, data in offers)
    done = functools.partial(_modules_refused, victim_rpc, refused, lying)
    asyncio.run(module_peddler(bootstrap, run, offers, workdir, done))


def _modules_refused(rpc_address: str, count: int, bad_holder: bool) -> bool:
    from potluck.rpc.client import ControlClient

    with ControlClient(rpc_address, timeout=5.0) as client:
        m = client.status().modules
    return sum(m.refused.values()) >= count and (m.bad_holder_fetches > 0 or not bad_holder)
