"""A participant frozen (SIGSTOP) in the middle of an aggregation: the attempt is abandoned cleanly, the
next attempt commits among the others within the same round, and the frozen node, once thawed,
catches up to their version. Never a partial commit, never two versions for one round."""

from __future__ import annotations

import os
import signal
import time

import pytest

from potluck.engine.entries import ENTRY_WINDOW_S
from potluck.localswarm import wait_for
from potluck.rounds import schedule
from tests.engine.test_engine import AUTHORS, Run
from tests.support.swarm import connected_swarm

pytestmark = pytest.mark.multiprocess
# a 10 s aggregation window: room for a failed attempt (hivemind's matchmaking outlasts its 3.5 s by
# ~2 s when a peer is frozen) and a retry; at 32 s the retry had ~0.2 s left and sometimes failed
ROUND_S = 40.0


def test_a_participant_frozen_mid_aggregation_does_not_stall_the_round(tmp_path):
    run = Run(tmp_path, round_seconds=ROUND_S, placement="allreduce")  # the all-reduce is what stalls
    with connected_swarm(tmp_path / "swarm", 3, manifest=run.path) as swarm:
        r = run.next_collecting_round()
        before = swarm.nodes[0].status()["version"]
        for i, node in enumerate(swarm.nodes):
            run.publish(node, AUTHORS[i], r, seed=500 + i)
        frozen, others = swarm.nodes[2], swarm.nodes[:2]
        # freeze it after it published its entry for attempt 0, before the all-reduce
        freeze_at = schedule.aggregation_start(run.manifest, r) + ENTRY_WINDOW_S / 2
        time.sleep(max(0.0, freeze_at - time.time()))
        os.killpg(frozen.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: all(n.status()["committed_round"] >= r for n in others), ROUND_S, f"round {r}")
            statuses = [n.status() for n in others]
            assert len({s["version"] for s in statuses}) == 1 and statuses[0]["version"] != before
            assert len(statuses[0]["participants"]) == 2
            assert "attempt 0" in statuses[0]["round_error"]  # the first attempt failed, the retry committed
            # and the status counts it: a failed attempt, and the retry after it
            assert (
                statuses[0]["failed_attempts"] >= 1
                and statuses[0]["attempts"] > statuses[0]["failed_attempts"]
            )
        finally:
            os.killpg(frozen.pid, signal.SIGCONT)
        wait_for(lambda: frozen.status()["version"] == statuses[0]["version"], 2 * ROUND_S, "the thawed node")
        assert frozen.status()["committed_round"] == r
