"""`potluck demo --task lm` from a pre-trained genesis: BPB per round in its JSON, and a sample."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import potluck


@pytest.mark.multiprocess
def test_the_lm_demo_from_a_pretrained_genesis_reports_bpb_and_ends_with_a_sample():
    proc = potluck(
        "demo", "--task", "lm", "--contributors", "2", "--rounds", "2", "--round-seconds", "12",
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
    assert len(result["rounds"]) == 2
    for row in result["rounds"]:
        assert row["nodes_agreeing"] == row["nodes"] == 3 and row["contributors"] == 2
        assert row["bpb"] is not None and row["bytes_sent"] > 0
    # the genesis already knows something (8 bits per byte is a uniform guess); the rounds keep the gain
    assert result["genesis_bpb"] < 7.0 and result["final_bpb"] == result["rounds"][-1]["bpb"]
    assert result["final_bpb"] < result["genesis_bpb"]
    assert isinstance(result["sample"], str) and result["sample"]
    assert "pre-trained in" in proc.stderr
