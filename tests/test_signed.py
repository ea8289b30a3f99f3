"""potluck.signed: the one shell of signed records (body, bounds, signature, the record's exception)."""

import msgpack
import pytest

from potluck import signed
from potluck.identity import NodeIdentity
from potluck.signed import RecordError, RecordFormat
from potluck.wire import pack_pair


class BadThing(RecordError):
    pass


THING = RecordFormat("potluck/thing/v1", 2, 256, 1, BadThing, max_array_len=3, max_str_len=32)


def test_body_is_domain_then_fields():
    assert THING.body(b"x", 3) == msgpack.packb(["potluck/thing/v1", b"x", 3], use_bin_type=True)
    assert THING.fields_of(THING.body(b"x", 3)) == [b"x", 3]
    with pytest.raises(ValueError):
        THING.body(b"x")


def test_sign_open_check():
    identity = NodeIdentity.generate()
    body = THING.body(identity.public_key, 1)
    signed = THING.sign(identity, identity.public_key, body)
    fields, got_body, signature = THING.open(signed)
    assert fields == [identity.public_key, 1] and got_body == body
    THING.check_signature(identity.public_key, signature, body)
    with pytest.raises(ValueError):  # only the key the record names signs it
        THING.sign(NodeIdentity.generate(), identity.public_key, body)
    with pytest.raises(BadThing) as info:
        THING.check_signature(NodeIdentity.generate().public_key, signature, body)
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # not msgpack
        pack_pair(msgpack.packb(["potluck/other/v1", b"x", 3]), b"s" * 64),  # another domain
        pack_pair(msgpack.packb(["potluck/thing/v1", b"x"]), b"s" * 64),  # a field missing
        pack_pair(msgpack.packb(["potluck/thing/v1", "y" * 33, 3]), b"s" * 64),  # a string too long
        pack_pair(b"\x91" * 3 + b"\xc0", b"s" * 64),  # nested too deep
        b"\x00" * 300,  # over max_bytes
    ],
)
def test_refusals_are_the_records_own_exception(data):
    with pytest.raises(BadThing) as info:
        THING.open(data)
    assert info.value.reason == "malformed"


def test_reason_for_a_bad_signature_is_configurable():
    fmt = RecordFormat("potluck/thing/v1", 2, 256, 1, BadThing, bad_signature_reason="bad_record_signature")
    with pytest.raises(BadThing, match="bad_record_signature"):
        fmt.check_signature(b"k" * 32, b"s" * 64, b"body")


def test_a_verified_signature_is_remembered_and_a_changed_body_is_not(monkeypatch):
    identity = NodeIdentity.generate()
    body = THING.body("remembered", [1, 2])
    signature = identity.sign(body)
    checks = []
    real = signed.verify
    monkeypatch.setattr(signed, "verify", lambda *a: checks.append(a) or real(*a))
    for _ in range(3):
        THING.check_signature(identity.public_key, signature, body)
    assert len(checks) == 1  # one Ed25519 check, then the memo
    other = THING.body("remembered", [1, 3])
    for _ in range(2):  # the same signature on other bytes never passes, memo or not
        with pytest.raises(BadThing):
            THING.check_signature(identity.public_key, signature, other)
    assert len(checks) == 3
