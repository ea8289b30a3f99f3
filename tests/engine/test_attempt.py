"""potluck.engine.attempt: the commit latency histogram RoundStatus keeps for /metrics."""

from __future__ import annotations

import pytest

from potluck.engine.attempt import COMMIT_SECONDS_BUCKETS, Histogram, RoundStatus


def test_a_histogram_counts_cumulatively_by_bucket():
    h = Histogram((1.0, 5.0))
    for value in (0.5, 1.0, 3.0, 7.0):
        h.observe(value)
    assert (h.counts, h.count, h.sum) == ([2, 3], 4, 11.5)  # 7.0 is counted in +Inf (count) only


def test_each_commit_sets_the_last_phases_and_only_adds_to_the_histogram():
    status = RoundStatus()
    assert status.commit_seconds.bounds == COMMIT_SECONDS_BUCKETS and status.commit_seconds.count == 0
    before: list[int] = list(status.commit_seconds.counts)
    for phases in (
        {"entries": 0.1, "merge": 0.05, "commit": 0.05},
        {"entries": 3.0, "merge": 1.0, "commit": 2.5},
    ):
        status.committed(phases)
        assert status.last_phases == phases
        counts = status.commit_seconds.counts
        assert all(b <= a for a, b in zip(counts, before, strict=True))  # monotonic across scrapes
        before = list(counts)
    assert status.commit_seconds.count == 2 and status.commit_seconds.sum == pytest.approx(6.7)
    le = dict(zip(COMMIT_SECONDS_BUCKETS, status.commit_seconds.counts, strict=True))
    assert (le[0.25], le[5.0], le[10.0]) == (1, 1, 2)
    # a new RoundStatus does not share its histogram with another (no mutable default)
    assert RoundStatus().commit_seconds.count == 0
