"""potluck.joining: the run a node takes part in, worked out before (or while) it starts."""

from __future__ import annotations

import pytest

from potluck import joining
from potluck.errors import ConfigError
from potluck.runfiles import write_run
from potluck.store.history import History
from potluck.store.versions import VersionStore
from potluck.swarm.membership import LocalState


@pytest.fixture
def run(tmp_path):
    written = write_run(tmp_path / "run.toml", "toy", round_seconds=16.0, start_time=0.0)
    return written.manifest, written.path


def test_a_local_manifest_brings_its_genesis_and_names_its_run(run, tmp_path):
    manifest, path = run
    versions = VersionStore(tmp_path / "versions")
    assert joining.local_manifest(path, "default", tmp_path, versions) == manifest
    assert versions.has(manifest.genesis)
    with pytest.raises(ConfigError, match="is not the run id of --manifest"):
        joining.local_manifest(path, "ab" * 32, tmp_path, versions)
    context = joining.run_context(manifest, versions)
    assert context.run == manifest.run_id and context.known_bases == {manifest.genesis}


def test_a_fetched_manifest_is_found_again_in_the_cache(run, tmp_path):
    manifest, _ = run
    versions = VersionStore(tmp_path / "versions")
    assert joining.local_manifest(None, manifest.run_id, tmp_path, versions) is None
    joining.manifest_cache(tmp_path, manifest.run_id).write_bytes(manifest.to_bytes())
    assert joining.local_manifest(None, manifest.run_id, tmp_path, versions) == manifest


def test_the_history_is_genesis_and_what_commits_produced(run, tmp_path):
    manifest, _ = run
    with History(tmp_path / "history.sqlite") as history:
        assert joining.in_history(manifest, history, manifest.genesis)
        assert not joining.in_history(manifest, history, "cd" * 32)
    assert not joining.in_history(None, None, manifest.genesis)  # no run, no history


def test_without_a_manifest_the_flags_are_the_context(tmp_path):
    versions, local = VersionStore(tmp_path / "v"), LocalState(role="keeper", agent="test")
    with pytest.raises(ConfigError, match="--allow takes node ids"):
        joining.validation_context(
            joining.NodeConfig(tmp_path, allow=["zz"]), "default", None, versions, local
        )
    config = joining.NodeConfig(tmp_path, max_update_norm=2.0)
    context = joining.validation_context(config, "default", None, versions, local)
    assert context.admitted is None and context.max_norm == 2.0 and context.known_bases == frozenset()


@pytest.mark.multiprocess
def test_a_node_joining_by_run_id_fetches_a_pretrained_genesis_from_its_peers(tmp_path):
    """A genesis that the task's seed does not rebuild (``init --genesis``) comes from the peers,
    checked against the manifest's hash, and the node then runs the run."""
    from potluck.localswarm import LocalSwarm, wait_for
    from potluck.tasks import genesis, get_task

    state, _ = genesis(get_task("toy", {}), 0)
    pretrained = {name: (t + 0.5).astype(t.dtype) for name, t in state.items()}  # not the seeded init
    written = write_run(tmp_path / "run.toml", "toy", round_seconds=16.0, genesis_state=pretrained)
    manifest = written.manifest
    with LocalSwarm.for_run(tmp_path / "swarm", manifest.run_id, written.path) as swarm:
        swarm.add_node(name="keeper").wait_ready()
        newcomer = swarm.add_node(name="newcomer", extra_args=["--run", manifest.run_id]).wait_ready()
        wait_for(
            lambda: newcomer.status()["version"] == manifest.genesis, 40, "the newcomer to hold the genesis"
        )
        assert newcomer.status()["run_id"] == manifest.run_id
        assert VersionStore(newcomer.data_dir / "versions").has(manifest.genesis)
        assert "pre-trained genesis" in newcomer.log_path.read_text()
