"""README's "A run, by hand", against a real keeper: an update made without --run and --round takes
them from the running node, and the keeper accepts it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from potluck.localswarm import LocalSwarm, next_collecting_round
from potluck.runfiles import write_run
from potluck.store.versions import atomic_save
from tests.support.cli import potluck

pytestmark = pytest.mark.multiprocess


def test_update_made_for_the_running_node_is_accepted(tmp_path):
    run = write_run(tmp_path / "run.toml", "toy", round_seconds=12.0, density=0.25)
    rng = np.random.default_rng(0)
    tuned = {k: (v + rng.normal(0, 0.1, v.shape)).astype(v.dtype) for k, v in run.state.items()}
    atomic_save(tuned, tmp_path / "tuned.safetensors")
    with LocalSwarm.for_run(tmp_path / "swarm", run.manifest.run_id, run.path) as swarm:
        keeper = swarm.add_node(name="keeper").wait_ready()
        round_ = next_collecting_round(run.manifest)
        node = ["--rpc", keeper.rpc_address]
        made = potluck("update", "make", "--data-dir", str(tmp_path / "author"), *node,
                       "--base", str(run.genesis_path), "--model", str(tmp_path / "tuned.safetensors"),
                       "-o", str(tmp_path / "my.update"), check=True)  # fmt: skip
        assert f"round {round_}" in made.stdout and keeper.rpc_address in made.stdout
        published = potluck("update", "publish", str(tmp_path / "my.update"), *node, "--json", check=True)
        assert json.loads(published.stdout)["accepted"]
        info = json.loads(potluck("update", "inspect", str(tmp_path / "my.update"), "--json").stdout)
        assert (info["run"], info["round"]) == (run.manifest.run_id, round_)
