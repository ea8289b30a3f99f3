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


SMALL_LM = {"n_layer": 1, "n_head": 2, "d_model": 32, "context": 32, "eval_bytes": 1024}


def test_a_run_from_a_given_genesis_names_that_state_and_its_nodes_load_it(tmp_path):
    from potluck import joining
    from potluck.errors import ConfigError
    from potluck.runfiles import cached_manifest
    from potluck.store.versions import VersionStore
    from potluck.tasks import get_task, pretrain

    base = pretrain(get_task("lm", SMALL_LM), steps=5)
    run = write_run(tmp_path / "run.toml", "lm", task_args=SMALL_LM, genesis_state=base)
    assert (
        run.manifest.genesis
        == run.genesis_hash
        == version_hash(base)
        == version_hash(load_state(run.genesis_path))
    )
    assert run.manifest.genesis != version_hash(get_task("lm", SMALL_LM).init_state(0))
    node_dir = tmp_path / "node"
    versions = VersionStore(node_dir / "versions")
    assert joining.local_manifest(run.path, "default", node_dir, versions) == run.manifest
    assert version_hash(versions.get(run.manifest.genesis)) == run.manifest.genesis
    assert cached_manifest(node_dir, run.manifest.run_id) == run.manifest  # for `generate` and `log`
    # without the file beside the manifest, the seed cannot rebuild it: the error says what to do
    run.genesis_path.unlink()
    with pytest.raises(ConfigError, match=r"pre-trained genesis.*is missing: start with --manifest"):
        joining.ensure_genesis(VersionStore(tmp_path / "other"), run.manifest, run.path)
    with pytest.raises(ConfigError, match="this node has no copy"):
        joining.ensure_genesis(VersionStore(tmp_path / "other"), run.manifest, None)


def test_a_genesis_of_another_model_writes_nothing(tmp_path):
    from potluck.tasks import get_task

    other = get_task("lm", SMALL_LM | {"d_model": 64}).init_state(0)
    with pytest.raises(TaskError, match="has shape"):
        write_run(tmp_path / "run.toml", "lm", task_args=SMALL_LM, genesis_state=other)
    assert list(tmp_path.iterdir()) == []
