"""Equivocation evidence (pure): a claim proves a ban only with two updates validly signed by its
author for its run and round; everything else is rejected with a reason."""

import dataclasses

import pytest

from potluck.defence.evidence import BadEvidence, Equivocation, EvidenceRecord, check_equivocation
from potluck.identity import NodeIdentity
from potluck.updates.codec import DecodeLimits, encode_update, parse_update
from tests.updates.builders import RUN, build

AUTHOR, OTHER, REPORTER = (NodeIdentity.generate() for _ in range(3))
LIMITS = DecodeLimits()


def signed(identity=AUTHOR, **overrides) -> tuple[str, bytes]:
    data = encode_update(build(identity, **overrides), identity)
    return parse_update(data).update_id, data


def claim_for(a, b, round_=5, author=AUTHOR, run=RUN) -> tuple[Equivocation, bytes, bytes]:
    (ia, da), (ib, db) = a, b
    claim = Equivocation.of(run, round_, author.public_key, ia, ib)
    first, second = (da, db) if claim.first_id == ia else (db, da)
    return claim, first, second


def test_two_signed_updates_for_one_round_prove_equivocation():
    claim, first, second = claim_for(signed(seq=1), signed(seq=2, sample_count=7))
    check_equivocation(claim, first, second, LIMITS)
    assert Equivocation.from_bytes(claim.body()) == claim
    same = claim_for(signed(seq=2, sample_count=7), signed(seq=1))[0]
    assert same.evidence_id == claim.evidence_id  # whoever finds the pair, in whatever order


def test_bogus_evidence_is_rejected_with_its_reason():
    a, b = signed(seq=1), signed(seq=2)
    cases = {
        "wrong_round": claim_for(a, signed(seq=3, round=6)),
        "wrong_author": claim_for(a, signed(OTHER, seq=2)),
        "wrong_run": claim_for(a, b, run="another-run"),
    }
    claim, first, second = claim_for(a, b)
    tampered = bytearray(second)
    tampered[-1] ^= 1  # the signature: the id (hash of the body) stays the same
    cases["bad_update"] = (claim, first, bytes(tampered))
    cases["id_mismatch"] = (claim, first, signed(seq=9)[1])
    for reason, (c, x, y) in cases.items():
        with pytest.raises(BadEvidence) as info:
            check_equivocation(c, x, y, LIMITS)
        assert info.value.reason == reason, reason
    with pytest.raises(BadEvidence) as info:
        Equivocation.of(RUN, 5, AUTHOR.public_key, a[0], a[0])  # one update twice
    assert info.value.reason == "same_update"
    with pytest.raises(BadEvidence):
        Equivocation(RUN, 5, AUTHOR.public_key, *sorted((a[0], b[0]), reverse=True))


def test_records_are_signed_by_their_reporter():
    claim = claim_for(signed(seq=1), signed(seq=2))[0]
    record = EvidenceRecord(claim, REPORTER.public_key, 1_700_000_000.0)
    data = record.sign(REPORTER)
    assert len(data) < 400 and EvidenceRecord.verify(data) == record
    forged = dataclasses.replace(record, reporter=OTHER.public_key)
    with pytest.raises(ValueError):
        forged.sign(REPORTER)
    body = bytearray(data)
    body[-1] ^= 1
    for bad in (bytes(body), b"", b"\x91" * 5000, data[:-3]):
        with pytest.raises(BadEvidence):
            EvidenceRecord.verify(bad)
