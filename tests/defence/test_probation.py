"""Probation (pure): seniority from committed history, weight 0 until then, bitmaps for the entries."""

from potluck.defence import probation
from potluck.identity import NodeIdentity
from potluck.manifest import create_manifest

LOG = [
    {"round": 0, "contributors": ["a", "b"]},
    {"round": 1, "contributors": ["a"]},
    {"round": 3, "contributors": ["a", "c"]},  # round 2 committed nothing
]


def test_contributions_count_committed_rounds_before_a_round():
    assert probation.contributions(LOG) == {"a": 3, "b": 1, "c": 1}
    assert probation.contributions(LOG, before=3) == {"a": 2, "b": 1}
    assert probation.contributions(LOG[1:], before=3) == {"a": 1}  # a late joiner under-counts


def test_weight_is_zero_until_the_author_served_its_rounds():
    m = create_manifest(NodeIdentity.generate(), "toy", "ab" * 32, probation_rounds=2)
    assert probation.update_weight(m, 50, senior=False) == 0
    assert probation.update_weight(m, 50, senior=True) == 50
    off = create_manifest(NodeIdentity.generate(), "toy", "ab" * 32)
    assert off.probation_rounds == 0 and probation.update_weight(off, 50, senior=False) == 50
    counts = probation.contributions(LOG, before=3)
    assert [probation.is_senior(counts[x], 2) for x in "abc"] == [True, False, False]
    assert [probation.rounds_left(counts[x], 2) for x in "abc"] == [0, 1, 2]


def test_bitmaps_round_trip():
    for bits in ([], [False] * 9, [True], [True, False, True] * 5):
        packed = probation.pack_bits(bits)
        assert probation.unpack_bits(packed, len(bits)) == bits
        assert (packed == b"") == (not any(bits))
    assert probation.pack_bits([False] * 8 + [True]) == b"\x00\x01"
