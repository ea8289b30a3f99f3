import math

import pytest

from potluck.identity import NodeIdentity
from potluck.manifest import create_manifest
from potluck.rounds.schedule import (
    AGGREGATION_FRACTION,
    aggregation_start,
    deadline,
    phase_at,
    position,
    round_at,
    round_start,
)

IDENTITY = NodeIdentity.generate()


def _m(start=1_700_000_000.0, seconds=60.0):
    return create_manifest(IDENTITY, "toy", "00" * 32, round_seconds=seconds, start_time=start)


def test_rounds_and_phases():
    m = _m()
    s = m.start_time
    assert round_at(m, s - 1) == -1 and phase_at(m, s - 1) == "waiting"
    assert round_at(m, s) == 0 and phase_at(m, s) == "collecting"
    assert round_start(m, 3) == s + 180 and deadline(m, 3) == s + 240
    assert aggregation_start(m, 3) == s + 240 - AGGREGATION_FRACTION * 60
    assert round_at(m, s + 180) == 3
    assert round_at(m, math.nextafter(s + 180, 0)) == 2
    assert phase_at(m, s + 180 + 44.9) == "collecting"
    assert phase_at(m, s + 180 + 45) == "aggregating"
    assert phase_at(m, math.nextafter(s + 240, 0)) == "aggregating"
    assert position(m, s + 200) == (3, "collecting", s + 225)
    assert position(m, s + 230) == (3, "aggregating", s + 240)
    assert position(m, s - 5) == (-1, "waiting", s)
    assert position(m, s + 230).seconds_left(s + 230) == 10
    with pytest.raises(ValueError):
        round_start(m, -1)


@pytest.mark.parametrize("seconds", [0.1, 0.3, 1 / 3, 7.7, 60.0, 3600.0])
def test_boundaries_are_consistent_in_floating_point(seconds):
    m = _m(start=1_712_345_678.123, seconds=seconds)
    for r in [*range(0, 2000, 7), 10**6 + 1]:
        t = round_start(m, r)
        assert round_at(m, t) == r
        assert round_at(m, math.nextafter(t, -math.inf)) == r - 1 or (r == 0)
        assert round_start(m, r) <= t < deadline(m, r)
