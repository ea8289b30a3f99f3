import time

import msgpack
import pytest

from potluck.identity import NodeIdentity
from potluck.swarm.records import (
    MAX_RECORD_BYTES,
    SIGNATURE_MARKER,
    PeerRecord,
    RecordReason,
    RecordRejected,
    check_signed_record,
    parse_subkey,
    public_key_in,
    signing_message,
    subkey_for,
)

KEY = b"k" * 20  # a DHTID's bytes


def make_record(identity: NodeIdentity, **overrides) -> PeerRecord:
    fields = dict(
        peer_id=identity.peer_id,
        addrs=("/ip4/127.0.0.1/tcp/1/p2p/" + identity.peer_id,),
        role="keeper",
        agent="potluck/test",
        round=0,
        model_version="",
        timestamp=time.time(),
        sequence=1,
    )
    return PeerRecord(**{**fields, **overrides})


def signed(identity: NodeIdentity, record: PeerRecord, expiration: float, signer: NodeIdentity | None = None):
    """(serialized subkey, signed serialized value) exactly as the DHT validator produces them."""
    subkey = msgpack.packb(subkey_for(identity.public_key))
    value = msgpack.packb(record.encode())
    signature = (signer or identity).sign(signing_message(KEY, subkey, value, expiration))
    return subkey, value + SIGNATURE_MARKER + signature


def test_encode_decode_round_trip_is_canonical():
    record = make_record(NodeIdentity.generate())
    assert PeerRecord.decode(record.encode()) == record
    assert record.encode() == PeerRecord.decode(record.encode()).encode()


def test_a_genuine_record_passes():
    ident = NodeIdentity.generate()
    record = make_record(ident)
    expiration = record.timestamp + 30
    subkey, value = signed(ident, record, expiration)
    checked = check_signed_record(KEY, subkey, value, expiration, now=time.time())
    assert checked.record == record and checked.public_key == ident.public_key


def rejection(ident, record, expiration, *, signer=None, tamper=lambda k, s, v, e: (k, s, v, e)):
    key, subkey, value, exp = tamper(KEY, *signed(ident, record, expiration, signer), expiration)
    with pytest.raises(RecordRejected) as info:
        check_signed_record(key, subkey, value, exp, now=time.time())
    return info.value.reason


def test_each_forgery_is_rejected_with_its_reason():
    ident, other = NodeIdentity.generate(), NodeIdentity.generate()
    record = make_record(ident)
    exp = record.timestamp + 30
    assert rejection(ident, record, exp, signer=other) == RecordReason.BAD_SIGNATURE
    # the signature covers key, value and expiration: moving or extending the record breaks it
    assert (
        rejection(ident, record, exp, tamper=lambda k, s, v, e: (b"x" * 20, s, v, e))
        == RecordReason.BAD_SIGNATURE
    )
    assert (
        rejection(ident, record, exp, tamper=lambda k, s, v, e: (k, s, v, e + 1))
        == RecordReason.BAD_SIGNATURE
    )
    unsigned = lambda k, s, v, e: (k, s, v[: v.index(SIGNATURE_MARKER)], e)  # noqa: E731
    assert rejection(ident, record, exp, tamper=unsigned) == RecordReason.UNSIGNED
    assert (
        rejection(ident, record, exp, tamper=lambda k, s, v, e: (k, b"\xa3abc", v, e))
        == RecordReason.BAD_SUBKEY
    )
    huge = lambda k, s, v, e: (k, s, b"\x00" * (MAX_RECORD_BYTES + 1), e)  # noqa: E731
    assert rejection(ident, record, exp, tamper=huge) == RecordReason.OVERSIZED
    # a record that claims another node's peer id
    assert rejection(ident, make_record(ident, peer_id=other.peer_id), exp) == RecordReason.PEER_ID_MISMATCH
    # a record that asks to live for a year
    assert rejection(ident, record, record.timestamp + 365 * 86400) == RecordReason.BAD_EXPIRATION


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"peer_id": 1}),
        msgpack.packb({**make_record(NodeIdentity.generate()).__dict__, "round": -1, "addrs": []}),
        msgpack.packb({**make_record(NodeIdentity.generate()).__dict__, "addrs": ["x"] * 1000}),
        msgpack.packb(
            {**make_record(NodeIdentity.generate()).__dict__, "timestamp": float("nan"), "addrs": []}
        ),
        b"\x91" * 10_000,  # 10k nested arrays
    ],
)
def test_malformed_values_are_rejected_not_raised(payload):
    with pytest.raises(RecordRejected) as info:
        PeerRecord.decode(payload)
    assert info.value.reason in (RecordReason.MALFORMED, RecordReason.OVERSIZED)


def test_subkey_parsing():
    pub = NodeIdentity.generate().public_key
    assert parse_subkey(msgpack.packb(subkey_for(pub))) == pub
    assert public_key_in(subkey_for(pub)) == pub
    assert parse_subkey(msgpack.packb(subkey_for(pub)[:-1])) is None
    assert public_key_in(b"other") is None
