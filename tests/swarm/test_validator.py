import time

import msgpack
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord

from potluck.identity import NodeIdentity
from potluck.swarm.records import PeerRecord, peers_key, subkey_for
from potluck.swarm.validator import PeerRecordValidator, RejectionCounters

RUN_KEY = DHTID.generate(source=peers_key("default")).to_bytes()


def record_of(identity: NodeIdentity, sequence: int, *, key: bytes = RUN_KEY) -> DHTRecord:
    now = time.time()
    payload = PeerRecord(identity.peer_id, (), "keeper", "potluck/test", 0, "", now, sequence).encode()
    return DHTRecord(key, msgpack.packb(subkey_for(identity.public_key)), msgpack.packb(payload), now + 30)


def signed_by(validator: PeerRecordValidator, record: DHTRecord) -> DHTRecord:
    return DHTRecord(record.key, record.subkey, validator.sign_value(record), record.expiration_time)


def make_validator(identity=None, counters=None):
    return PeerRecordValidator(
        identity or NodeIdentity.generate(), "default", counters or RejectionCounters()
    )


def test_signs_own_records_and_accepts_them_elsewhere():
    alice = NodeIdentity.generate()
    signed = signed_by(make_validator(alice), record_of(alice, 1))
    checker = make_validator()
    assert checker.validate(signed)
    stripped = checker.strip_value(signed)
    assert PeerRecord.decode(msgpack.unpackb(stripped)).sequence == 1


def test_rejections_are_counted_by_reason():
    alice, mallory = NodeIdentity.generate(), NodeIdentity.generate()
    counters = RejectionCounters()
    checker = make_validator(counters=counters)
    unsigned = record_of(alice, 1)
    assert not checker.validate(unsigned)
    # mallory signs a record naming alice: her validator won't, so forge the bytes by hand
    forged = signed_by(make_validator(mallory), record_of(mallory, 1))
    forged = DHTRecord(forged.key, unsigned.subkey, forged.value, forged.expiration_time)
    assert not checker.validate(forged)
    foreign_subkey = DHTRecord(RUN_KEY, msgpack.packb("some-subkey"), b"\xa1x", time.time() + 30)
    assert not checker.validate(foreign_subkey)
    oversized = DHTRecord(RUN_KEY, unsigned.subkey, b"\x00" * 5000, time.time() + 30)
    assert not checker.validate(oversized)
    assert counters.snapshot() == {
        "unsigned": 1,
        "bad_subkey": 1,
        "oversized": 1,
        "bad_signature": 1,
        "malformed": 0,
        "peer_id_mismatch": 0,
        "bad_expiration": 0,
        "replayed": 0,
        "too_deep": 0,
    }


def test_an_older_record_is_a_replay_once_a_newer_one_was_seen():
    alice = NodeIdentity.generate()
    signer, counters = make_validator(alice), RejectionCounters()
    checker = make_validator(counters=counters)
    old, new = signed_by(signer, record_of(alice, 5)), signed_by(signer, record_of(alice, 9))
    assert checker.validate(old)
    assert checker.validate(new)
    assert checker.validate(new)  # seeing the same record again is fine
    assert not checker.validate(old)
    assert counters.snapshot()["replayed"] == 1


def test_other_applications_records_pass_through():
    checker = make_validator()
    other = DHTRecord(
        DHTID.generate(source="hivemind-averager").to_bytes(), b"\xa1x", b"\xa5value", time.time() + 5
    )
    assert checker.validate(other)
    assert checker.sign_value(other) == other.value
    assert checker.strip_value(other) == other.value


def test_counters_are_shared_with_a_forked_child():
    import multiprocessing as mp

    counters = RejectionCounters()
    checker = make_validator(counters=counters)
    bad = DHTRecord(RUN_KEY, msgpack.packb("x"), b"", time.time() + 5)
    child = mp.get_context("fork").Process(target=checker.validate, args=(bad,))
    child.start()
    child.join()
    assert counters.snapshot()["bad_subkey"] == 1
