"""`potluck fork`: a new run from a version of another, its lineage signed in the manifest and shown by
`log`; a manifest without lineage keeps its bytes (and run id)."""

from __future__ import annotations

import json

import msgpack
import pytest

from potluck.hashing import version_hash
from potluck.manifest import ManifestError
from potluck.runfiles import genesis_path, load_manifest
from potluck.store.versions import load_state
from tests.cli.test_cli import assert_config_error, in_process
from tests.vcs.conftest import Built, build_history


def test_a_fork_starts_from_the_version_and_names_its_parent(built: Built, tmp_path, capsys) -> None:
    out = tmp_path / "fork.toml"
    dd = str(built.data_dir)
    proc = in_process(
        capsys, "fork", "--from", f"{tmp_path / 'run.toml'}@r1", "-o", str(out), "--data-dir", dd
    )
    assert proc.returncode == 0, proc.stderr
    assert "(round 1)" in proc.stdout
    fork = load_manifest(out)  # signature checked
    parent = built.manifest
    assert (fork.parent_run, fork.parent_version, fork.genesis) == (
        parent.run_id,
        built.versions[2],
        built.versions[2],
    )
    assert version_hash(load_state(genesis_path(out))) == built.versions[2]
    assert (fork.strategy, fork.quorum, fork.outer_lr, fork.task) == (parent.strategy, 2, 0.5, parent.task)
    assert msgpack.unpackb(fork.body())[1]["parent_run"] == parent.run_id

    # the fork's own history, then log with and without the parent's
    b = build_history(tmp_path, rounds=2, run=out, node="fork-node")
    text = in_process(capsys, "log", "--data-dir", str(b.data_dir)).stdout
    assert f"forked from run {parent.run_id[:16]} at version {built.versions[2][:16]}" in text
    rows = json.loads(
        in_process(capsys, "log", "--data-dir", str(b.data_dir), "--parent-data-dir", dd, "--json").stdout
    )
    expected = [(parent.run_id, 0), (parent.run_id, 1), (fork.run_id, 0), (fork.run_id, 1)]
    assert [(e["run_id"], e["round"]) for e in rows] == expected
    assert rows[2]["parent"] == built.versions[2]  # the fork's round 0 builds on the parent's version
    genesis = json.loads(
        in_process(capsys, "show", "genesis", "--data-dir", str(b.data_dir), "--json").stdout
    )
    assert genesis["lineage"] == {"run_id": parent.run_id, "version": built.versions[2]}
    assert in_process(capsys, "verify", "--data-dir", str(b.data_dir)).returncode == 0
    export = tmp_path / "export"  # the model card of an export names the lineage
    assert in_process(capsys, "export", "--data-dir", str(b.data_dir), "--to", str(export)).returncode == 0
    card = (export / "README.md").read_text()
    assert f"| forked from | run `{parent.run_id}` at version `{built.versions[2]}` |" in card


def test_fork_refuses_what_it_cannot_use(built: Built, tmp_path, capsys) -> None:
    dd, run = str(built.data_dir), str(tmp_path / "run.toml")
    out = str(tmp_path / "fork.toml")
    assert_config_error(in_process(capsys, "fork", "--from", f"{run}@r9", "-o", out, "--data-dir", dd), "r9")
    assert_config_error(
        in_process(capsys, "fork", "--from", str(tmp_path / "nope.toml"), "-o", out, "--data-dir", dd),
        "nope.toml",
    )
    other = tmp_path / "other"
    other.mkdir()
    b = build_history(other)
    assert_config_error(
        in_process(capsys, "fork", "--from", run, "-o", out, "--data-dir", str(b.data_dir)), "this history"
    )
    assert not (tmp_path / "fork.toml").exists()


def test_lineage_must_name_the_genesis(built: Built) -> None:
    from dataclasses import replace

    with pytest.raises(ManifestError, match="parent_version is its genesis"):
        replace(
            built.manifest, parent_run=built.manifest.run_id, parent_version=built.versions[1], signature=b""
        )
    assert (
        "parent_run" not in msgpack.unpackb(built.manifest.body())[1]
    )  # omitted at default: old run ids stay


def test_log_follows_a_fork_of_a_fork(built: Built, tmp_path, capsys) -> None:
    """C forks B at B's round 0, B forks A at A's round 1: log of C lists A to its round 1, B to its round
    0, then C, with each --parent-data-dir given; one line per fork; a dir of another run is refused."""
    a_dir = str(built.data_dir)
    b_run, c_run = tmp_path / "b.toml", tmp_path / "c.toml"
    fork = ["fork", "--from"]
    assert (
        in_process(
            capsys, *fork, f"{tmp_path / 'run.toml'}@r1", "-o", str(b_run), "--data-dir", a_dir
        ).returncode
        == 0
    )
    b = build_history(tmp_path, rounds=2, run=b_run, node="b-node")
    assert (
        in_process(capsys, *fork, f"{b_run}@r0", "-o", str(c_run), "--data-dir", str(b.data_dir)).returncode
        == 0
    )
    c = build_history(tmp_path, rounds=1, run=c_run, node="c-node")
    a_id, b_id, c_id = built.manifest.run_id, b.manifest.run_id, c.manifest.run_id
    log = [
        "log",
        "--data-dir",
        str(c.data_dir),
        "--parent-data-dir",
        str(b.data_dir),
        "--parent-data-dir",
        a_dir,
    ]
    rows = json.loads(in_process(capsys, *log, "--json").stdout)
    assert [(e["run_id"], e["round"]) for e in rows] == [(a_id, 0), (a_id, 1), (b_id, 0), (c_id, 0)]
    text = in_process(capsys, *log).stdout
    assert f"run {c_id[:16]} forked from run {b_id[:16]} at version {b.versions[1][:16]}" in text
    assert f"run {b_id[:16]} forked from run {a_id[:16]} at version {built.versions[2][:16]}" in text
    # with B's history only: B's rounds, and where A's would come from
    text = in_process(capsys, *log[:5]).stdout
    assert f"forked from run {a_id[:16]} at version {built.versions[2][:16]} (its history: one more" in text
    other = build_history(tmp_path, rounds=1, node="other-node")
    proc = in_process(capsys, *log, "--parent-data-dir", str(other.data_dir))
    assert_config_error(proc, "not in this run's lineage")
