"""`potluck module publish|add|export`, `potluck modules`, `potluck generate --modules|--route`: the
module library a node keeps in its data dir (in process: none of them starts a node)."""

from __future__ import annotations

import json
import shutil

import pytest

from potluck.identity import KEY_FILE, load_or_create
from potluck.store.modules import ModuleStore
from potluck.store.versions import VersionStore
from potluck.tasks import get_task
from potluck.tasks.lm_modules import merged_state, routed_forward
from tests.cli.test_cli import assert_config_error, in_process
from tests.cli.test_lm import SMALL, _data_dir

TRAIN = ("--shard", "poetry", "--steps", "2", "--gate-steps", "5", "--rank", "2")


@pytest.fixture(scope="module")
def node_dirs(tmp_path_factory):
    """Two data dirs of one run (the second a copy of the first with its own key), no modules yet."""
    root = tmp_path_factory.mktemp("mods")
    a, run, versions = _data_dir(root, "lm", SMALL)
    load_or_create(a)
    b = root / "other"
    shutil.copytree(a, b)
    (b / KEY_FILE).unlink()
    load_or_create(b)
    return a, b, run, versions


def _modules(capsys, data_dir) -> list[dict]:
    proc = in_process(capsys, "modules", "--data-dir", str(data_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_publish_list_supersede_and_a_name_clash(capsys, tmp_path, node_dirs):
    a, b, _, versions = node_dirs
    assert (
        _modules(capsys, a) == []
        and "no modules" in in_process(capsys, "modules", "--data-dir", str(a)).stdout
    )
    proc = in_process(capsys, "module", "publish", "--data-dir", str(a), "--name", "verse", *TRAIN,
                      "--description", "Milton", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)
    assert first["status"] == "kept" and first["version"] == 1 and first["trunk"] == versions[2]
    assert first["rank"] == 2 and first["record_bytes"] > first["payload_bytes"] > 0
    listed = _modules(capsys, a)
    assert [(m["name"], m["version"], m["description"]) for m in listed] == [("verse", 1, "Milton")]
    proc = in_process(
        capsys, "module", "publish", "--data-dir", str(a), "--name", "verse", *TRAIN, "--seed", "1"
    )
    assert proc.returncode == 0 and "module verse v2 superseded" in proc.stdout, proc.stderr
    assert [m["version"] for m in _modules(capsys, a)] == [2]

    # the record travels as a file: another node checks and keeps it, or refuses a taken name
    record = tmp_path / "verse.module"
    assert (
        in_process(capsys, "module", "export", "--data-dir", str(a), "verse", "-o", str(record)).returncode
        == 0
    )
    proc = in_process(capsys, "module", "publish", "--data-dir", str(b), "--name", "verse", *TRAIN)
    assert proc.returncode == 0, proc.stderr
    assert_config_error(
        in_process(capsys, "module", "add", "--data-dir", str(b), str(record)),
        "name_taken",
        "module name already taken by another author",
    )
    assert [m["author"] for m in _modules(capsys, b)] != [m["author"] for m in _modules(capsys, a)]
    proc = in_process(capsys, "module", "add", "--data-dir", str(b), str(record).replace("verse", "none"))
    assert proc.returncode == 2
    c = tmp_path / "third"
    shutil.copytree(a, c, ignore=shutil.ignore_patterns("modules", KEY_FILE))
    load_or_create(c)
    proc = in_process(capsys, "module", "add", "--data-dir", str(c), str(record))
    assert proc.returncode == 0 and "module verse v2 kept" in proc.stdout, proc.stderr
    assert _modules(capsys, c) == _modules(capsys, a)
    assert_config_error(  # refused before any training
        in_process(capsys, "module", "publish", "--data-dir", str(c), "--name", "verse", *TRAIN),
        "module name already taken by another author",
    )
    # a damaged record is refused, and never kept
    bad = tmp_path / "bad.module"
    bad.write_bytes(record.read_bytes()[:-1] + bytes([record.read_bytes()[-1] ^ 1]))
    shutil.rmtree(c / "modules")
    assert_config_error(in_process(capsys, "module", "add", "--data-dir", str(c), str(bad)), "bad_signature")
    assert _modules(capsys, c) == []


def _generate(capsys, data_dir, *args: str) -> dict:
    proc = in_process(capsys, "generate", "--data-dir", str(data_dir), "--prompt", "Of ", "--max-bytes", "30",
                      "--json", *args)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_generate_with_modules_merged_or_routed(capsys, node_dirs):
    a, _, _, versions = node_dirs
    if not _modules(capsys, a):
        assert (
            in_process(
                capsys, "module", "publish", "--data-dir", str(a), "--name", "verse", *TRAIN
            ).returncode
            == 0
        )
    plays = ("--name", "plays", "--shard", "plays", "--steps", "2", "--gate-steps", "5", "--rank", "2")
    assert in_process(capsys, "module", "publish", "--data-dir", str(a), *plays).returncode == 0
    task = get_task("lm", SMALL)
    state = VersionStore(a / "versions").get(versions[2])
    lib = ModuleStore(a / "modules").library()
    merged = _generate(capsys, a, "--modules", "plays,verse")
    want = task.generate(merged_state(state, lib.select(["plays", "verse"])), b"Of ", 30)
    assert merged["text"] == want.decode("utf-8", "replace") and merged["modules"] == ["plays", "verse"]
    routed = _generate(capsys, a, "--route", "--top-k", "2", "--prefix-scores")
    want = task.generate(state, b"Of ", 30, forward=routed_forward(lib.select(None), task, 2, prefix=True))
    assert routed["text"] == want.decode("utf-8", "replace")
    assert routed["route"] == {"top_k": 2, "prefix_scores": True} and routed["modules"] is None
    gen = ("generate", "--data-dir", str(a), "--prompt", "x")
    assert_config_error(in_process(capsys, *gen, "--modules", "nosuch"), "no module named 'nosuch'")
    assert_config_error(in_process(capsys, *gen, "--route", "--top-k", "3"), "only 2 modules")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--module-rank", "2"], "--module-rank needs --module NAME"),
        (["--patches"], "--patches needs --module NAME"),
        (["--module", "Bad Name", "--shard", "poetry"], "bad --module name 'Bad Name'"),
        (["--module", "verse"], "--module needs --shard SPEC"),
        (["--module", "verse", "--shard", "poetry", "--rounds", "2"], "add --patches"),
        (["--module", "verse", "--shard", "poetry", "--client-mode"], "drop --client-mode"),
        (["--module", "verse", "--shard", "poetry", "--module-description", "x" * 513], "at most 512"),
    ],
)
def test_join_module_refuses_bad_options_before_starting_a_node(capsys, tmp_path, extra, needle):
    proc = in_process(capsys, "join", "--data-dir", str(tmp_path), "--run", "ab" * 32, *extra)
    assert_config_error(proc, needle)


def test_join_help_tells_how_to_publish_a_module(capsys):
    proc = in_process(capsys, "join", "--help")
    assert proc.returncode == 0
    for option in ("--module NAME", "--module-rank RANK", "--gate-steps N", "--patches"):
        assert option in proc.stdout
    assert "train a named module" in proc.stdout
