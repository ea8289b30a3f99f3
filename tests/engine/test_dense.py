"""A dense round on real nodes: under "auto" the weighted mean of a run of dense updates merges through
potluck's own reduce-scatter (engine/dense.py), with the bytes an independent merge of the signed
updates gives, on every node, and says so in status and in the log."""

from __future__ import annotations

import pytest

from potluck.localswarm import wait_for
from potluck.runfiles import write_run
from tests.engine.attacked_round import expected_version, publish_attacked_round, run_swarm

pytestmark = pytest.mark.multiprocess
TASK_ARGS = {"hidden": 128}  # 2692 coordinates: 11 blocks, a range for each of 3 reducers


def test_a_dense_round_merges_through_the_reduce_scatter(tmp_path):
    run = write_run(tmp_path / "run.toml", "toy", task_args=TASK_ARGS, round_seconds=16.0, density=1.0)
    with run_swarm(tmp_path, run.manifest, run.path) as swarm:
        swarm.start(3)
        swarm.wait_all_see(2)
        r, datas = publish_attacked_round(swarm.nodes, run.manifest, run.state, run.genesis_hash)
        wait_for(lambda: all(n.status()["committed_round"] >= r for n in swarm.nodes), 26, f"round {r}")
        expected = expected_version(run.manifest, run.state, datas, r, "weighted_mean")
        for node in swarm.nodes:
            st = node.status()
            assert st["version"] == expected, node.log_tail(40)
            aggregation = st["aggregation"]
            assert aggregation["placement"] == "dense"
            assert aggregation["placement_reason"].startswith("auto: dense updates (density 1)")
            assert aggregation["audited_sums"] >= 1  # the other reducers' ranges, recomputed
            assert (
                f"round {r} attempt 0: dense merge of 4 updates among 3 participants"
                in node.log_path.read_text()
            )
