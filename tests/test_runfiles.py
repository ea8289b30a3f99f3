"""write_run: the one way a run is written (by `potluck init`, the demo, tests and benches)."""

from __future__ import annotations

import pytest

from potluck.hashing import version_hash
from potluck.identity import NodeIdentity
from potluck.runfiles import load_manifest, write_run
from potluck.store.versions import load_state
from potluck.tasks import TaskError


def test_write_run_writes_a_manifest_and_its_genesis(tmp_path):
    creator = NodeIdentity.generate()
    run = write_run(tmp_path / "run.toml", "toy", creator=creator, task_args={"hidden": 8}, seed=3,
                    round_seconds=5.0, density=0.25, quorum=2)  # fmt: skip
    assert load_manifest(tmp_path / "run.toml") == run.manifest
    assert run.genesis_path == tmp_path / "run.genesis.safetensors"
    assert version_hash(load_state(run.genesis_path)) == run.genesis_hash == run.manifest.genesis
    m = run.manifest
    assert (m.creator, m.seed, m.task_args, m.quorum, m.density) == (
        creator.node_id,
        3,
        {"hidden": 8},
        2,
        0.25,
    )


def test_write_run_writes_nothing_for_a_bad_task_and_needs_the_folder(tmp_path):
    with pytest.raises(TaskError):
        write_run(tmp_path / "run.toml", "no-such-task")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError):
        write_run(tmp_path / "missing" / "run.toml", "toy")
