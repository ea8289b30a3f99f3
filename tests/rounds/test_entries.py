"""Round entries (pure): signed, bounded, and the assignment and defences every participant derives
from them alike."""

import hashlib

import msgpack
import pytest

from potluck.defence.probation import pack_bits
from potluck.identity import NodeIdentity
from potluck.rounds.entries import (
    MAX_ENTRY_EXCLUDED,
    BadEntry,
    RoundEntry,
    agreement_digest,
    assign,
    excluded_ids,
    retry_holders,
    senior_ids,
)
from potluck.wire import pack_pair

RUN, BASE = "ab" * 32, "cd" * 32
NODES = [NodeIdentity.generate() for _ in range(3)]


def uid(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def entry(node: NodeIdentity, updates, **extras) -> RoundEntry:
    return RoundEntry(RUN, 4, 0, BASE, node.public_key, tuple(sorted(updates)), **extras)


def test_round_trip_with_defence_fields():
    ids = sorted(uid(i) for i in range(10))
    e = entry(
        NODES[0], ids, senior=pack_bits(i % 3 == 0 for i in range(10)), excluded=((uid(99), uid(98), 2),)
    )
    back = RoundEntry.verify(e.sign(NODES[0]))
    assert back == e
    assert senior_ids([back]) == {ids[i] for i in range(10) if i % 3 == 0}


def test_forged_or_malformed_entries_are_refused():
    e = entry(NODES[0], [uid(1)])
    data = bytearray(e.sign(NODES[0]))
    data[-1] ^= 1
    with pytest.raises(BadEntry, match="signature"):
        RoundEntry.verify(bytes(data))
    with pytest.raises(ValueError):
        e.sign(NODES[1])  # a participant signs only its own entry
    bad_bodies = [
        entry(NODES[0], [uid(1), uid(2)], senior=b"\x01\x00"),  # bitmap longer than the updates
        entry(NODES[0], [uid(1)], senior=b"\x02"),  # a bit past the updates
        entry(NODES[0], [uid(1)], excluded=((uid(3), uid(4), 0), (uid(3), uid(5), 0))),  # repeated id
        entry(NODES[0], [uid(1)], excluded=tuple((uid(i), uid(0), 0) for i in range(MAX_ENTRY_EXCLUDED + 1))),
    ]
    for bad in bad_bodies:
        body = bad._body()
        with pytest.raises(BadEntry):
            RoundEntry.verify(pack_pair(body, NODES[0].sign(body)))
    old = msgpack.packb(["potluck/round-entry/v1", RUN, 4, 0, bytes.fromhex(BASE), NODES[0].public_key, []])
    with pytest.raises(BadEntry, match="domain"):
        RoundEntry.verify(pack_pair(old, NODES[0].sign(old)))


def test_any_entry_excludes_an_update_from_everyone_s_assignment():
    a = entry(NODES[0], [uid(1), uid(2)], excluded=((uid(2), uid(50), 3),))
    b = entry(NODES[1], [uid(2), uid(3)])  # has not banned the author of update 2
    c = entry(NODES[2], [uid(3)])
    for order in ([a, b, c], [c, b, a]):
        assignment = assign(order)
        assert sorted(assignment) == sorted([uid(1), uid(3)])
    assert excluded_ids([a, b, c]) == {uid(2): {(uid(50), 3)}}
    assert agreement_digest([a, b, c]) == agreement_digest([c, a, b])


def test_a_retry_merges_only_updates_a_majority_holds():
    phantom = uid(99)  # listed by one participant only: nobody else can fetch it
    a = entry(NODES[0], sorted([uid(1), uid(2), phantom]))
    b = entry(NODES[1], [uid(1), uid(2)])
    c = entry(NODES[2], [uid(1)])  # has not fetched update 2 yet
    assert sorted(assign([a, b, c])) == sorted([uid(1), uid(2), phantom])  # attempt 0: any holder
    assert [retry_holders(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    retry = assign([a, b, c], retry_holders(3))
    assert sorted(retry) == sorted([uid(1), uid(2)])
    assert retry[uid(2)] in (a.node, b.node)  # carried by a holder
    assert retry == {u: n for u, n in assign([a, b, c]).items() if u != phantom}  # the same carriers
    assert assign([a], retry_holders(1)) == assign([a])  # alone, everything it holds


def test_an_update_is_senior_when_any_holder_vouches_for_it():
    ids = [uid(1), uid(2)]
    vouching = entry(NODES[0], ids, senior=pack_bits([False, True]))
    late_joiner = entry(NODES[1], ids)  # an incomplete history vouches for nobody
    assert senior_ids([vouching, late_joiner]) == {sorted(ids)[1]}
    assert senior_ids([late_joiner]) == set()
