"""potluck.merge.record: the per-author probe record, folded from the rounds' scores alike everywhere."""

from __future__ import annotations

import pytest

from potluck.merge.probe import ProbeError, probe_args
from potluck.merge.record import RECORD_GRAIN, AuthorRecord, next_record, record_args, round_scores


def test_author_record_trusts_authors_whose_decayed_scores_add_up_positive() -> None:
    record = AuthorRecord(0.5)
    assert record.trusted(["a", "b"]) == set()  # no record yet: nobody is trusted
    record.add(["a", "b", "c"], {0: 1.0, 1: -2.0, 2: 0.5})
    assert record.trusted(["b", "c", "a"]) == {1, 2}
    record.add(["a", "b"], {0: -0.6, 1: 1.5})  # a: 0.5 - 0.6 < 0; b: -1 + 1.5 > 0; c absent: decays
    assert record.values == {"a": -0.09999999999999998, "b": 0.5, "c": 0.25}
    assert record.trusted(["a", "b", "c"]) == {1, 2}


def test_a_round_scores_an_author_by_the_sum_of_its_updates() -> None:
    # index order is the round's update-id order; an author with two updates gets their sum
    assert round_scores(["a", "b", "a"], {0: 0.5, 1: -1.0, 2: 0.25}) == {"a": 0.75, "b": -1.0}
    assert round_scores(["a", "b"], {1: 2.0}) == {"a": 0.0, "b": 2.0}  # unscored: 0, yet decayed


def test_the_next_record_decays_every_author_adds_the_rounds_scores_and_drops_what_fades() -> None:
    before = {"a": 1.0, "b": -2.0, "gone": 1.5 * RECORD_GRAIN}
    after = next_record(before, {"b": 1.5, "c": 0.25}, 0.5)
    assert after == {"a": 0.5, "b": 0.5, "c": 0.25}  # "gone": below a grain
    assert list(after) == sorted(after)  # by author: the commit's order
    assert next_record(after, {}, 0.5) == {"a": 0.25, "b": 0.25, "c": 0.125}  # an unscored round decays
    assert next_record({}, {"a": 0.0}, 0.5) == {}  # a zero score records nothing


def test_the_probe_table_takes_a_record_and_keeps_no_keys_without_one() -> None:
    name = "ab" * 32
    base = {"floor": 0.0, "frac": 0.5, "per_class": 10, "set": name}
    assert probe_args({"set": name}) == base  # no record keys: the run reads as it did before records
    assert probe_args({"set": name, "record": 0}) == base
    assert probe_args({"set": name, "record": 0.5}) == base | {"record": 0.5, "strict": 1.0}
    assert probe_args({"set": name, "record": 0.5, "strict": 2}) == base | {"record": 0.5, "strict": 2.0}
    for table, message in [
        ({"record": 1.0}, r"probe.record must be a number in \[0, 1\)"),
        ({"record": -0.1}, r"probe.record must be"),
        ({"record": True}, r"probe.record must be"),
        ({"record": 0.5, "strict": 0}, r"probe.strict must be a number in \(0, 10\]"),
        ({"strict": float("inf")}, r"probe.strict must be"),
    ]:
        with pytest.raises(ProbeError, match=message) as e:
            probe_args({"set": name, **table})
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"probe\.strict"):
        record_args({"record": 0.5, "strict": "x"})
