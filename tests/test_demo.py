"""`potluck demo --task lm` from a pre-trained genesis: BPB in its JSON, and a sample."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import potluck


@pytest.mark.multiprocess
def test_the_lm_demo_from_a_pretrained_genesis_reports_bpb_and_ends_with_a_sample():
    # one 16 s round (shorter ones leave the merge too short a window for this model on 2 cores)
    proc = potluck(
        "demo", "--task", "lm", "--contributors", "2", "--rounds", "1", "--round-seconds", "16",
        "--local-steps", "5", "--pretrain-steps", "20", "--json", timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert {
        "rounds",
        "genesis_bpb",
        "final_bpb",
        "sample",
    } <= result.keys() and "final_accuracy" not in result
    [row] = result["rounds"]
    assert row["nodes_agreeing"] == row["nodes"] == 3 and row["contributors"] >= 1, result
    assert row["bpb"] is not None and row["bytes_sent"] > 0 and result["final_bpb"] == row["bpb"]
    # the genesis already knows something (8 bits per byte is a uniform guess); the round improves it
    assert result["genesis_bpb"] < 7.0 and result["final_bpb"] < result["genesis_bpb"], result
    assert isinstance(result["sample"], str) and result["sample"]
    assert "pre-trained in" in proc.stderr
