"""A dense round on real nodes: under "auto" the weighted mean of a run of dense updates merges through
potluck's own reduce-scatter (engine/dense.py), with the bytes an independent merge of the signed
updates gives, on every node, and says so in status and in the log; a reducer that signs a wrong sum
is convicted by a fault every node checks, banned, and the round commits without it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from potluck.cli.format import format_status
from potluck.engine.faults import faults_key
from potluck.identity import NodeIdentity
from potluck.localswarm import wait_for
from potluck.rounds import dense
from potluck.rounds.slices import SliceHeader
from potluck.runfiles import write_run
from potluck.wire import pack_pair
from tests.engine.attacked_round import (
    add_trusting_and_liar,
    expected_version,
    publish_attacked_round,
    run_swarm,
)
from tests.support.attacks import store_values
from tests.support.spawned import run_spawned

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


def test_a_lying_dense_reducer_is_convicted_banned_and_the_retry_commits_without_it(tmp_path):
    """A keeper signs a wrong merged range: the auditing keepers refuse the sum and publish the fault
    (rounds/dense.DenseFault); every honest keeper, the one that audits nothing too, checks it against its
    own copies of the signed updates and bans the reducer; the retry commits the right bytes without it.
    A forged fault naming an honest keeper proves nothing and bans nobody."""
    # quorum 3 of 4: the liar and the keeper that trusts it cannot commit the lie. "ready" pacing: round 0
    # closes once its 4 updates (10 samples each) are in, and its attempts get the time a retry needs
    run = write_run(
        tmp_path / "run.toml", "toy", task_args=TASK_ARGS, round_seconds=16.0, density=1.0, quorum=3,
        pacing="ready", target_samples=40,
    )  # fmt: skip
    with run_swarm(tmp_path, run.manifest, run.path) as swarm, ThreadPoolExecutor(1) as pool:
        swarm.start(2)
        # a fault "against" the first keeper, stored from a plain DHT peer while the others start
        framed = _forged_fault(run.manifest.run_id, bytes.fromhex(swarm.nodes[0].status()["node_id"]))
        stored = pool.submit(
            run_spawned, store_values, swarm.nodes[0].multiaddr(), faults_key(run.manifest.run_id),
            [(b"framed", framed)], 60.0,
        )  # fmt: skip
        honest, liar_id = add_trusting_and_liar(swarm, "tests.engine.lying_dense_reducer")
        trusting = honest[2]
        assert stored.result(90) == [True]
        r, datas = publish_attacked_round(honest, run.manifest, run.state, run.genesis_hash, round_=0)
        wait_for(lambda: all(n.status()["committed_round"] >= r for n in honest), 30, f"round {r}")
        expected = expected_version(run.manifest, run.state, datas, r, "weighted_mean")
        for node in honest:
            st = node.status()
            assert st["version"] == expected, node.log_tail(40)  # bit-identical, the lie nowhere
            assert liar_id not in st["participants"]
            agg = st["aggregation"]
            assert [(c["node_id"], c["round"]) for c in agg["convicted"]] == [(liar_id, r)], node.log_tail(40)
            assert (
                "signed a dense sum that is not the sum of the signed updates" in agg["convicted"][0]["why"]
            )
            assert agg["convictions"] == {"wrong_dense_sum": 1}
            assert agg["bad_faults_by_reason"].get("bad_signature", 0) >= 1  # the framed keeper: not banned
            assert [(b["node_id"], b["reason"]) for b in st["defence"]["bans"]] == [
                (liar_id, "lying_reducer")
            ]
        # the keeper that audits nothing learned of the lie from the published fault alone
        assert "signed a wrong sum at coordinate" not in trusting.log_path.read_text()
        for node in honest[:2]:  # the auditors: attempt 0 dense, refused with a fault; the retry sliced
            log = node.log_path.read_text()
            assert f"round {r} attempt 0: dense merge" in log
            assert "signed a wrong sum at coordinate" in log and "convicted, fault" in log
        text = format_status(honest[2].status())  # what `potluck status` prints
        assert f"convicted     {liar_id[:16]} in round {r}: signed a dense sum" in text


def _forged_fault(run_id: str, honest_key: bytes) -> bytes:
    """A dense fault "against" an honest keeper: a header naming it as the reducer, signed by another key."""
    mallory = NodeIdentity.generate()
    values = dense.encode(np.arange(512, dtype=np.int64))
    header = SliceHeader(
        run_id, 0, 0, "11" * 32, "22" * 32, honest_key, 0, 512, (), dense.tree_digest(values)
    )
    signed = pack_pair(header.body(), mallory.sign(header.body()))
    return dense.DenseFault.make(signed, values, 0, 100).to_bytes()
