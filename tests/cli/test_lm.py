"""The commands around the lm task: `pretrain`, `init --genesis`, `generate`, and the score's name in
`log` and `status` (in process: none of them starts a node)."""

from __future__ import annotations

import json

import pytest

from potluck.hashing import version_hash
from potluck.store.versions import atomic_save, load_state
from potluck.tasks import get_task, pretrain
from tests.cli.test_cli import assert_config_error, in_process

SMALL = {"n_layer": 1, "n_head": 2, "d_model": 32, "context": 32, "eval_bytes": 1024}
SMALL_ARGS = [arg for key, value in SMALL.items() for arg in ("--task-arg", f"{key}={value}")]


def test_pretrain_writes_the_deterministic_base_and_reports_bpb_per_domain(capsys, tmp_path):
    out = tmp_path / "base.safetensors"
    proc = in_process(capsys, "pretrain", "--task", "lm", *SMALL_ARGS, "--steps", "40", "--seed", "3",
                      "-o", str(out), "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert "step 40/40" in proc.stderr  # progress goes to stderr with --json
    assert report["metric"] == "bpb" and report["steps"] == 40 and report["task_args"] == SMALL
    assert set(report["after"]) == {"plays", "scripture", "poetry", "overall"}
    assert all(report["after"][d] < report["before"][d] - 1.0 for d in report["before"])
    assert version_hash(load_state(out)) == version_hash(pretrain(get_task("lm", SMALL), steps=40, seed=3))
    proc = in_process(capsys, "pretrain", "--task", "lm", *SMALL_ARGS, "--steps", "2", "-o", str(out))
    assert proc.returncode == 0 and "overall" in proc.stdout and f"--genesis {out}" in proc.stdout
    assert_config_error(
        in_process(capsys, "pretrain", "--task", "nosuch", "--steps", "2", "-o", str(out)), "unknown task"
    )


def _init(tmp_path, *task_args: str) -> tuple[str, ...]:
    return (
        "init",
        "--data-dir",
        str(tmp_path / "d"),
        "--task",
        "lm",
        *task_args,
        "-o",
        str(tmp_path / "run.toml"),
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    atomic_save(pretrain(get_task("lm", SMALL), steps=20), path)
    return path


def test_init_from_a_pretrained_genesis_names_its_state(capsys, tmp_path, base):
    from potluck.runfiles import load_manifest

    proc = in_process(capsys, *_init(tmp_path, *SMALL_ARGS), "--genesis", str(base))
    assert proc.returncode == 0, proc.stderr
    manifest = load_manifest(tmp_path / "run.toml")
    assert (
        manifest.genesis
        == version_hash(load_state(base))
        == version_hash(load_state(tmp_path / "run.genesis.safetensors"))
    )
    assert f"from {base}" in proc.stdout and "--run RUN_ID fetches the genesis from its peers" in proc.stdout


@pytest.mark.parametrize(
    "task_args, needles",
    [
        (["--task-arg", "d_model=64"], ["'transformer.h.0.attn.c_attn.bias' has shape (96,)", "(192,)"]),
        ([], ["--genesis", "has shape"]),
    ],
)
def test_init_refuses_a_genesis_of_another_model_and_writes_nothing(
    capsys, tmp_path, base, task_args, needles
):
    args = SMALL_ARGS + task_args if task_args else []
    out = tmp_path / "run" / "run.toml"
    out.parent.mkdir()
    proc = in_process(capsys, "init", "--data-dir", str(tmp_path / "d"), "--task", "lm", *args,
                      "--genesis", str(base), "-o", str(out))  # fmt: skip
    assert_config_error(proc, *needles)
    assert list(out.parent.iterdir()) == []


def test_init_refuses_a_missing_or_broken_genesis_file(capsys, tmp_path, base):
    init = _init(tmp_path, *SMALL_ARGS)
    assert_config_error(
        in_process(capsys, *init, "--genesis", str(tmp_path / "no.safetensors")), "no such file"
    )
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    assert_config_error(
        in_process(capsys, *init, "--genesis", str(tmp_path / "bad.safetensors")), "not a safetensors"
    )
    digits = ("init", "--data-dir", str(tmp_path / "d"), "--task", "digits", "-o", str(tmp_path / "run.toml"))
    assert_config_error(in_process(capsys, *digits, "--genesis", str(base)), "lacks tensor", "task digits")
    assert not (tmp_path / "run.toml").exists()


# ---- generate: from the versions a node keeps ------------------------------------------------------------


def _data_dir(tmp_path, task: str, task_args: dict, keep_manifest: bool = True):
    """A data dir as a node of a ``task`` run leaves it: two committed rounds and its manifest's copy."""
    from potluck.hashing import tensor_hashes
    from potluck.identity import NodeIdentity
    from potluck.node import HISTORY_FILE
    from potluck.rounds.commit import Commit, sign_commit
    from potluck.runfiles import manifest_cache, write_run
    from potluck.store.history import History
    from potluck.store.versions import VersionStore

    run = write_run(tmp_path / "run.toml", task, task_args=task_args)
    data_dir = tmp_path / "node"
    node, the_task = NodeIdentity.generate(), get_task(task, task_args)
    versions = VersionStore(data_dir / "versions")
    versions.put(run.state)
    states = [run.state]
    with History(data_dir / HISTORY_FILE, versions) as history:
        for r in range(2):
            state = the_task.train(states[-1], the_task.local_data(None), steps=20, seed=r)[0]
            commit = Commit(
                run.manifest.run_id, r, version_hash(states[-1]), version_hash(state), tensor_hashes(state),
                participants=[node.node_id], total_weight=1,
            )  # fmt: skip
            history.record(commit, [sign_commit(commit, node)], state)
            history.set_accuracy(r, the_task.evaluate(state))
            states.append(state)
    if keep_manifest:
        manifest_cache(data_dir, run.manifest.run_id).write_bytes(run.manifest.to_bytes())
    return data_dir, run, [version_hash(s) for s in states]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return _data_dir(tmp_path_factory.mktemp("lm"), "lm", SMALL)


def _generate(capsys, data_dir, *args: str):
    proc = in_process(capsys, "generate", "--data-dir", str(data_dir), "--prompt", "And ", *args)
    return proc


def test_generate_is_deterministic_per_seed_and_version(capsys, lm_dir):
    data_dir, run, versions = lm_dir
    first = _generate(capsys, data_dir, "--max-bytes", "40", "--json")
    assert first.returncode == 0, first.stderr
    sample = json.loads(first.stdout)
    assert sample["version"] == versions[2] and sample["round"] == 1 and sample["prompt"] == "And "
    assert len(sample["text"].encode("utf-8", "surrogatepass")) >= 1 and sample["seed"] == 0
    assert json.loads(_generate(capsys, data_dir, "--max-bytes", "40", "--json").stdout) == sample
    other = json.loads(_generate(capsys, data_dir, "--max-bytes", "40", "--seed", "1", "--json").stdout)
    assert other["text"] != sample["text"]
    task = get_task("lm", SMALL)
    from potluck.store.versions import VersionStore

    state = VersionStore(data_dir / "versions").get(versions[2])
    assert sample["text"] == task.generate(state, b"And ", 40, seed=0, temperature=0.8).decode(
        "utf-8", "replace"
    )
    by_round = json.loads(_generate(capsys, data_dir, "--round", "0", "--max-bytes", "40", "--json").stdout)
    assert by_round["version"] == versions[1]
    genesis = json.loads(_generate(capsys, data_dir, "--version", versions[0][:8], "--json").stdout)
    assert genesis["version"] == run.manifest.genesis and genesis["round"] is None
    plain = _generate(capsys, data_dir, "--max-bytes", "40")
    assert plain.returncode == 0 and plain.stdout == "And " + sample["text"] + "\n"


def test_generate_refuses_bad_input_in_one_line(capsys, tmp_path, lm_dir):
    data_dir = lm_dir[0]
    assert_config_error(_generate(capsys, data_dir, "--version", "abcdef12"), "matches 0")
    assert_config_error(_generate(capsys, data_dir, "--round", "9"), "--round 9")
    assert_config_error(_generate(capsys, data_dir, "--max-bytes", "100000"), "at most 65536")
    assert_config_error(_generate(capsys, data_dir, "--temperature", "0"), "must be > 0")
    assert_config_error(_generate(capsys, tmp_path / "empty"), "no history")
    (tmp_path / "digits").mkdir()
    digits_dir, digits_run, _ = _data_dir(tmp_path / "digits", "digits", {})
    assert_config_error(_generate(capsys, digits_dir), "task 'digits' does not generate text")
    assert_config_error(
        _generate(capsys, data_dir, "--manifest", str(digits_run.path)), "this node's history is of run"
    )


def test_generate_without_the_nodes_copy_of_the_manifest_takes_the_file(capsys, tmp_path):
    data_dir, run, versions = _data_dir(tmp_path, "lm", SMALL, keep_manifest=False)
    assert_config_error(_generate(capsys, data_dir), "--manifest RUN.toml")
    proc = _generate(capsys, data_dir, "--manifest", str(run.path), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["version"] == versions[2]


def test_log_and_status_name_the_tasks_metric(capsys, lm_dir):
    from potluck.cli.common import run_metric
    from potluck.cli.format import format_status
    from potluck.rpc.jsonify import message_to_dict
    from potluck.v1 import control_pb2

    data_dir, run, _ = lm_dir
    header, *rows = in_process(capsys, "log", "--data-dir", str(data_dir)).stdout.splitlines()
    assert "BPB" in header.split() and "ACCURACY" not in header and len(rows) == 2
    assert run_metric(data_dir, run.manifest.run_id) == ("bpb", False)
    assert run_metric(data_dir, "ab" * 32) == ("accuracy", True)  # no manifest kept: the stored name
    status = message_to_dict(control_pb2.GetStatusResponse(accuracy=2.5)) | {
        "bootstrap": {"state": "none"}, "uptime_s": 1.0,
    }  # fmt: skip
    assert "bpb           2.5000 on the held-out split (lower is better)" in format_status(
        status, ("bpb", False)
    )
    assert "accuracy" not in format_status(status | {"accuracy": -1.0}, ("bpb", False))
