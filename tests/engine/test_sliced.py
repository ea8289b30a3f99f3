"""Coordinate strategies run inside the averaging: each keeper reduces one slice, the others audit it.

Real nodes: an honest run agrees bit for bit with an independent merge of the signed updates; a keeper
that signs a wrong slice is caught by the audits, the round commits without its lie, and every honest
node names it, with a fault that anyone holding the updates can check."""

from __future__ import annotations

import pytest

from potluck.localswarm import wait_for
from tests.engine.attacked_round import (
    add_trusting_and_liar,
    expected_version,
    make_run,
    publish_attacked_round,
    run_swarm,
)
from tests.support.cli import potluck_json

pytestmark = pytest.mark.multiprocess
TASK_ARGS = {"hidden": 128}  # 2692 coordinates: 11 blocks, so every one of 4 reducers has a slice


def test_sliced_median_agrees_with_an_independent_merge(tmp_path):
    manifest, path, state, genesis_hash = make_run(
        tmp_path, 16.0, TASK_ARGS, strategy="coordinate_median", placement="sliced"
    )
    with run_swarm(tmp_path, manifest, path) as swarm:
        swarm.start(3)
        swarm.wait_all_see(2)
        r, datas = publish_attacked_round(swarm.nodes, manifest, state, genesis_hash)
        wait_for(lambda: all(n.status()["committed_round"] >= r for n in swarm.nodes), 26, f"round {r}")
        versions = {n.status()["version"] for n in swarm.nodes}
        assert versions == {expected_version(manifest, state, datas, r, "coordinate_median")}
        for node in swarm.nodes:
            aggregation = node.status()["aggregation"]
            assert aggregation["placement"] == "sliced"
            assert aggregation["audited_slices"] >= 2  # the two other reducers' slices, at least once
            assert not aggregation.get("convicted")


def test_a_lying_reducer_is_convicted_and_its_lie_never_committed(tmp_path):
    # quorum 3 of 4: the liar's own signature cannot commit its lie anywhere; two attempts fit a round
    manifest, path, state, genesis_hash = make_run(
        tmp_path, 32.0, TASK_ARGS, strategy="trimmed_mean", quorum=3, placement="sliced"
    )
    with run_swarm(tmp_path, manifest, path) as swarm:
        swarm.start(2)
        honest, liar_id = add_trusting_and_liar(swarm, "tests.engine.lying_reducer")
        trusting = honest[2]
        r, datas = publish_attacked_round(honest, manifest, state, genesis_hash)
        wait_for(lambda: all(n.status()["committed_round"] >= r for n in honest), 45, f"round {r}")
        expected = expected_version(manifest, state, datas, r, "trimmed_mean")
        for node in honest:
            st = node.status()
            assert st["version"] == expected
            assert liar_id not in st["participants"]
            convicted = st["aggregation"]["convicted"]
            assert [c["node_id"] for c in convicted] == [liar_id], node.log_tail()
            assert convicted[0]["round"] == r
        assert trusting.status()["aggregation"].get("audited_coordinates", 0) == 0
        for node in honest:  # a ban for the run, in status and in the peer list
            bans = node.status()["defence"]["bans"]
            assert [(b["node_id"], b["reason"]) for b in bans] == [(liar_id, "lying_reducer")]
            listed = {p["node_id"]: p for p in node.peers()}
            assert listed[liar_id]["banned"] and listed[liar_id]["ban_reason"] == "lying_reducer"
        restarted = honest[1]
        restarted.stop()
        restarted.start().wait_ready(60)
        convicted = restarted.status()["aggregation"]["convicted"]
        assert [c["node_id"] for c in convicted] == [liar_id]  # still out after a restart
        assert "convicted" in honest[0].log_path.read_text()


def test_a_phantom_update_fails_one_attempt_and_the_retry_commits_without_it(tmp_path):
    """A keeper lists an update id nobody can fetch: attempt 0 cannot merge (every participant needs
    every update of a sliced merge), and the retry merges only the updates a majority holds."""
    manifest, path, state, genesis_hash = make_run(
        tmp_path, 32.0, TASK_ARGS, strategy="coordinate_median", placement="sliced"
    )
    with run_swarm(tmp_path, manifest, path) as swarm:
        swarm.start(3)
        phantom = swarm.add_node(name="phantom", module="tests.engine.phantom_lister").wait_ready(60)
        swarm.wait_all_see(3)
        r, datas = publish_attacked_round(swarm.nodes[:3], manifest, state, genesis_hash)
        wait_for(lambda: all(n.status()["committed_round"] >= r for n in swarm.nodes), 45, f"round {r}")
        expected = expected_version(manifest, state, datas, r, "coordinate_median")
        for node in swarm.nodes:
            st = node.status()
            assert st["version"] == expected, node.log_tail(40)
            assert f"round {r} attempt 0" in st["round_error"] and "not fetched in time" in st["round_error"]
            assert len(st["participants"]) == 4  # the lister took part in the retry, honestly this time
        log = potluck_json("log", "--data-dir", str(swarm.nodes[0].data_dir))
        assert log[-1]["round"] == r and log[-1]["updates"] == len(datas)  # the phantom is not listed
        assert phantom.status()["committed_round"] >= r


def test_the_all_reduce_refuses_a_wrong_sum_and_the_retry_runs_sliced(tmp_path):
    """The default weighted mean: a keeper feeding the all-reduce numbers of its own is caught by the
    others' audits, so nothing is committed with its numbers; the round's retry runs sliced, where
    that keeper can only reduce its slice from the signed updates, and commits the right bytes."""
    # 48 s rounds: a 12 s aggregation window, 4 s per attempt (the all-reduce has room under load)
    manifest, path, state, genesis_hash = make_run(tmp_path, 48.0, TASK_ARGS, quorum=3, placement="allreduce")
    with run_swarm(tmp_path, manifest, path) as swarm:
        swarm.start(3)
        swarm.add_node(name="liar", module="tests.engine.lying_carrier").wait_ready(60)
        honest = swarm.nodes[:3]
        swarm.wait_all_see(3)
        r, datas = publish_attacked_round(honest, manifest, state, genesis_hash)
        wait_for(lambda: all(n.status()["committed_round"] >= r for n in honest), 60, f"round {r}")
        expected = expected_version(manifest, state, datas, r, "weighted_mean")
        for node in honest:
            st = node.status()
            assert st["version"] == expected
            # the run fixes the all-reduce; the last attempt, the one that committed, was its sliced retry
            assert st["aggregation"]["placement_policy"] == "allreduce"
            assert st["aggregation"]["placement"] == "sliced"
            assert st["aggregation"]["placement_reason"].startswith("a retry of the all-reduce")
            assert st["aggregation"].get("audited_sums", 0) >= 1, (st, node.log_tail(40))
            assert st["aggregation"]["audited_slices"] >= 3
            log = node.log_path.read_text()
            assert f"round {r} attempt 0: allreduce merge" in log
            assert f"round {r} attempt 0 (allreduce): the all-reduce's sum at coordinate" in log
            assert "is not the sum of the signed updates" in log  # attempt 0, refused
