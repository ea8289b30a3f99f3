"""The `potluck` command's contract: usage and configuration errors are one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from potluck.cli import build_parser, main
from potluck.cli.format import format_peers, format_status
from tests.support.cli import potluck


def assert_config_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{proc.stderr}"
    for needle in needles:
        assert needle in lines[0]


def in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """Run main() here (fast) for commands that don't start a node; same exit code and output contract."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


@pytest.mark.parametrize("command", ["", "run", "status", "peers", "id", "demo"])
def test_every_command_has_help(capsys, command):
    proc = in_process(capsys, *([command] if command else []), "--help")
    assert proc.returncode == 0 and "usage: potluck" in proc.stdout


def test_version_is_looked_up_when_asked(capsys):
    import potluck

    proc = in_process(capsys, "--version")
    assert proc.returncode == 0 and proc.stdout == f"potluck {potluck.__version__}\n" and proc.stderr == ""
    assert f"potluck/{potluck.__version__}" == potluck.AGENT


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--bogus"], "unrecognized arguments"),
        (["run", "--record-ttl", "-1"], "must be > 0"),
        (["frobnicate"], "invalid choice"),
        (["demo", "--contributors", "0"], "expected 1..32"),
        (["demo", "--task", "nosuch"], "unknown task 'nosuch'"),
    ],
)
def test_bad_flags(capsys, args, needle):
    assert_config_error(in_process(capsys, *args), needle)


def test_id_is_stable_and_env_selects_the_data_dir(tmp_path):
    first = json.loads(potluck("id", "--json", env={"POTLUCK_DATA_DIR": str(tmp_path)}).stdout)
    second = json.loads(potluck("id", "--data-dir", str(tmp_path), "--json").stdout)
    assert first == second and first["peer_id"].startswith("12D3KooW") and len(first["node_id"]) == 64


def test_status_without_a_node_says_how_to_start_one(capsys, tmp_path):
    assert_config_error(
        in_process(capsys, "status", "--data-dir", str(tmp_path)), "no running node", "potluck run"
    )


def test_status_of_a_dead_address_fails_with_exit_1(capsys):
    proc = in_process(capsys, "peers", "--rpc", "127.0.0.1:1", "--timeout", "1")
    assert proc.returncode == 1 and "did not answer" in proc.stderr


def run_args(data_dir, *extra: str) -> list[str]:
    return [
        "run",
        "--data-dir",
        str(data_dir),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--rpc-listen",
        "127.0.0.1:0",
        *extra,
    ]


def test_corrupt_key_refuses_to_start_and_is_kept(tmp_path):
    key = tmp_path / "node.key"
    key.write_bytes(b"garbage")
    key.chmod(0o600)
    assert_config_error(potluck(*run_args(tmp_path)), "corrupt")
    assert key.read_bytes() == b"garbage"


def test_group_readable_key_refuses_to_start(tmp_path):
    potluck("id", "--data-dir", str(tmp_path))
    (tmp_path / "node.key").chmod(0o640)
    assert_config_error(potluck(*run_args(tmp_path)), "chmod 600")


def test_data_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    assert_config_error(potluck(*run_args(path)), str(path))


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--initial-peers", "/ip4/127.0.0.1/tcp/1"], "--initial-peers"),
        (["--initial-peers", "not-a-multiaddr"], "--initial-peers"),
        (["--rpc-listen", "0.0.0.0:0"], "--allow-remote-rpc"),
        (["--rpc-listen", "nonsense"], "--rpc-listen"),
        (["--run", "a/b"], "--run"),
        (["--metrics-listen", "nowhere"], "--metrics-listen"),
        (["--dashboard-listen", "nowhere"], "--dashboard-listen"),
    ],
)
def test_bad_configuration(tmp_path, extra, needle):
    assert_config_error(potluck(*run_args(tmp_path), *extra), needle)


def test_busy_ports_are_one_line_errors(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = potluck(
            "run",
            "--data-dir",
            str(tmp_path),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--rpc-listen",
            f"127.0.0.1:{port}",
        )
        assert_config_error(proc, "control API", str(port))
        proc = potluck(
            "run",
            "--data-dir",
            str(tmp_path),
            "--listen",
            f"/ip4/127.0.0.1/tcp/{port}",
            "--rpc-listen",
            "127.0.0.1:0",
        )
        assert_config_error(proc, "address already in use")
        # the read-only pages bind before the node starts, like the control API
        proc = potluck(*run_args(tmp_path), "--metrics-listen", f"127.0.0.1:{port}")
        assert_config_error(proc, f"cannot bind --metrics-listen 127.0.0.1:{port}: Address already in use")
    assert not (tmp_path / "api").exists() and not (tmp_path / "dashboard").exists()


def test_parser_accepts_the_documented_interface():
    args = build_parser().parse_args(
        [
            "run",
            "--data-dir",
            "d",
            "--listen",
            "/ip4/0.0.0.0/tcp/7451",
            "--initial-peers",
            "/ip4/1.2.3.4/tcp/1/p2p/x",
            "--rpc-listen",
            "127.0.0.1:0",
            "--run",
            "r",
        ]
    )
    assert args.listen == ["/ip4/0.0.0.0/tcp/7451"] and args.run == "r"
    join = ["join", "--run", "r"]
    assert not build_parser().parse_args(join).fresh_optimizer  # contributors keep their optimizer
    assert build_parser().parse_args([*join, "--fresh-optimizer"]).fresh_optimizer


def test_tables_show_what_people_look_for():
    from potluck.rpc.jsonify import message_to_dict
    from potluck.v1 import control_pb2

    status = message_to_dict(control_pb2.GetStatusResponse()) | {
        "node_id": "ab" * 32, "peer_id": "12D3KooWx", "run": "default", "role": "keeper",
        "agent_version": "potluck/1", "uptime_s": 3725.0, "peers": 2, "round": 4, "phase": "collecting",
        "dht_restarts": 1, "rejected_records": {"bad_signature": 3, "unsigned": 0},
        "rpc_address": "127.0.0.1:7450",
        "addrs": ["/ip4/127.0.0.1/tcp/1/p2p/12D3KooWx"], "version": "ef" * 32, "committed_round": 3,
        "bootstrap": {"state": "retrying", "attempts": 3, "next_retry_in_s": 4.0, "last_error": "refused",
                      "initial_peers": []},
        "aggregation": {"placement": "gathered", "placement_policy": "auto", "pacing": "ready",
                        "waiting_for": 2, "close_reason": "every declared contributor (3) has published",
                        "last_phases": {"entries": 0.16, "merge": 0.01, "commit": 0.04}},
        "round_error": "round 3 abandoned after 1 attempt(s); the last failed: the all-reduce timed out",
        "sync": {"version": "34" * 32, "bytes": 2_500_000, "target_bytes": 10_000_000},
    }  # fmt: skip
    text = format_status(status)
    assert "syncing       343434343434: 2.5 MB of 10.0 MB" in text
    assert "syncing" not in format_status(status | {"sync": {"version": ""}})
    assert "placement     gathered (policy auto)" in text
    assert "waiting for 2 declared update(s); the last round closed: every declared contributor (3)" in text
    assert "entries 0.16s, merge 0.01s, commit 0.04s" in text
    assert "round error   round 3 abandoned after 1 attempt(s); the last failed: the all-reduce" in text
    assert "1h02m05s" in text and "bad_signature=3" in text and "unsigned" not in text
    assert "retrying (3 attempts), next in 4s: refused" in text
    assert "4 (collecting)" in text and "ef" * 32 + " (round 3)" in text
    assert format_peers([]) == "no peers"
    peer = {
        "node_id": "cd" * 32,
        "peer_id": "12D3KooWy",
        "role": "keeper",
        "last_seen": 0.0,
        "model_version": "",
        "addrs": ["/ip4/1.2.3.4/tcp/1"],
    }
    assert "cdcdcdcd" in format_peers([peer]) and "/ip4/1.2.3.4/tcp/1" in format_peers([peer])


def test_tables_show_bans_probation_and_evidence():
    from potluck.rpc.jsonify import message_to_dict
    from potluck.v1 import control_pb2

    defence = control_pb2.Defence(
        bans=[control_pb2.Ban(node_id="ee" * 32, reason="equivocation", round=7, evidence_id="12" * 32)],
        probation=[control_pb2.Probation(node_id="cd" * 32, rounds_left=2)],
        probation_rounds=3,
        evidence_verified=1,
        evidence_rejected={"wrong_round": 2},
    )
    status = message_to_dict(control_pb2.GetStatusResponse(defence=defence)) | {
        "bootstrap": {"state": "none"}, "uptime_s": 1.0,
    }  # fmt: skip
    text = format_status(status)
    assert "eeeeeeeeeeeeeeee equivocation in round 7" in text
    assert "cdcdcdcdcdcdcdcd(2 left)" in text and "rejected wrong_round=2" in text
    base = {"peer_id": "p", "role": "keeper", "last_seen": 0.0, "model_version": "", "addrs": []}
    table = format_peers([
        base | {"node_id": "ee" * 32, "banned": True, "ban_reason": "equivocation"},
        base | {"node_id": "cd" * 32, "probation_rounds_left": 2},
    ])  # fmt: skip
    assert "banned (equivocation)" in table and "probation (2 left)" in table
    args = build_parser().parse_args(["init", "--task", "toy", "--probation-rounds", "2", "-o", "r.toml"])
    assert args.probation_rounds == 2
    assert build_parser().parse_args(["run", "--max-updates-per-author", "5"]).max_updates_per_author == 5


# ---- every option and command explains itself ------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser, path: str = "potluck"):
    """(command path, parser) of the whole tree, and each subcommand's help in its parent's listing."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert listed.get(name), f"{path} {name}: no help in {path}'s command list"
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_and_command_has_help():
    missing = []
    for path, parser in _parsers(build_parser()):
        if path != "potluck" and not parser.description:
            missing.append(f"{path}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.metavar or action.dest}")
    assert not missing, "without help: " + ", ".join(missing)


def test_readme_flag_table_names_every_run_flag():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = [line.split("|")[1] for line in readme.splitlines() if line.startswith("| `--")]
    table = {flag for row in rows for flag in re.findall(r"`(--[\w-]+)", row)}
    run = next(parser for path, parser in _parsers(build_parser()) if path == "potluck run")
    flags = {a.option_strings[-1] for a in run._actions if a.option_strings and a.dest != "help"}
    assert flags == table


# ---- one rule for a missing output folder: refused in one line, exit 2, naming the folder ---------------


@pytest.mark.parametrize(
    "args",
    [
        ["init", "--task", "toy"],
        ["pretrain", "--task", "toy", "--steps", "1"],
        ["export"],
        ["update", "make", "--base", "b", "--model", "m", "--run", "r", "--round", "0"],
        ["update", "apply", "--base", "b", "u"],
    ],
)
def test_missing_output_folder_is_one_line(capsys, tmp_path, args):
    folder = tmp_path / "no" / "such"
    proc = in_process(capsys, *args, "-o", str(folder / "out"))
    assert_config_error(proc, str(folder), "does not exist")
    assert not folder.parent.exists()


def test_init_writes_a_run_that_loads(capsys, tmp_path):
    from potluck.runfiles import load_manifest

    proc = in_process(capsys, "init", "--data-dir", str(tmp_path / "d"), "--task", "toy", "-o",
                      str(tmp_path / "run.toml"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = load_manifest(tmp_path / "run.toml")
    assert (
        proc.stdout.startswith(f"run {manifest.run_id}\n") and (tmp_path / "run.genesis.safetensors").exists()
    )


def test_init_signs_a_sparse_start_and_refuses_half_of_one(capsys, tmp_path):
    from potluck.runfiles import load_manifest

    init = ("init", "--data-dir", str(tmp_path / "d"), "--task", "toy", "-o", str(tmp_path / "run.toml"))
    assert in_process(capsys, *init, "--start-density", "0.005", "--start-rounds", "30").returncode == 0
    manifest = load_manifest(tmp_path / "run.toml")
    assert (manifest.density, manifest.start_density, manifest.start_rounds) == (0.01, 0.005, 30)
    proc = in_process(capsys, *init, "--start-density", "0.005")
    assert_config_error(proc, "start_density in (0, 1] with start_rounds >= 1, or both 0")


def test_init_fixes_a_placement_the_strategy_allows_or_refuses(capsys, tmp_path):
    from potluck.runfiles import load_manifest

    init = ("init", "--data-dir", str(tmp_path / "d"), "--task", "toy", "-o", str(tmp_path / "run.toml"))
    assert in_process(capsys, *init, "--placement", "allreduce").returncode == 0
    assert load_manifest(tmp_path / "run.toml").placement == "allreduce"
    proc = in_process(capsys, *init, "--strategy", "multi_krum", "--placement", "sliced")
    assert_config_error(proc, "--placement sliced", "whole-vector strategy: it runs gathered")
    proc = in_process(capsys, *init, "--strategy", "coordinate_median", "--placement", "allreduce")
    assert_config_error(proc, "runs gathered or sliced, not allreduce")
    # a history-aware strategy merges where the updates and the history are: gathered only
    for placement in ("sliced", "allreduce"):
        proc = in_process(capsys, *init, "--strategy", "history_clip", "--placement", placement)
        assert_config_error(
            proc, f"--placement {placement}", "'history_clip' is a history-aware (it merges with the last 4 "
            f"commits' steps) strategy: it runs gathered, not {placement}",
        )  # fmt: skip
    assert in_process(capsys, *init, "--strategy", "history_clip", "--placement", "gathered").returncode == 0


def test_init_probe_names_the_tasks_probe_set_by_hash_and_merges_gathered(capsys, tmp_path):
    from potluck.runfiles import load_manifest
    from potluck.tasks.probing import probe_digest

    init = ("init", "--data-dir", str(tmp_path / "d"), "-o", str(tmp_path / "run.toml"))
    proc = in_process(
        capsys, *init, "--task", "digits", "--probe", "8", "--probe-frac", "0.25", "--probe-floor", "0.01"
    )
    assert proc.returncode == 0, proc.stderr
    probe = load_manifest(tmp_path / "run.toml").probe
    assert probe == {"set": probe_digest("digits", {}, 8), "per_class": 8, "frac": 0.25, "floor": 0.01}
    proc = in_process(capsys, *init, "--task", "digits", "--probe", "8", "--probe-record", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert load_manifest(tmp_path / "run.toml").probe["record"] == 0.5
    assert load_manifest(tmp_path / "run.toml").probe["strict"] == 1.0
    proc = in_process(capsys, *init, "--task", "digits", "--probe", "8", "--probe-record", "1")
    assert_config_error(proc, "probe.record must be a number in [0, 1) (the decay; 0: off), got 1.0")
    proc = in_process(capsys, *init, "--task", "digits", "--probe", "8", "--probe-floor", "-1")
    assert_config_error(proc, "probe.floor must be a number in [0, 100], got -1.0")
    proc = in_process(capsys, *init, "--task", "toy", "--probe", "8")
    assert_config_error(proc, "--probe", "task 'toy' hands no probe set")
    proc = in_process(capsys, *init, "--task", "digits", "--probe", "8", "--placement", "allreduce")
    assert_config_error(proc, "--placement allreduce", "a run with a probe set merges gathered")
    proc = in_process(capsys, *init, "--task", "digits", "--probe", "8", "--placement", "gathered")
    assert proc.returncode == 0, proc.stderr


def test_init_groups_sign_their_rules_and_bad_syntax_is_one_line(capsys, tmp_path):
    from potluck.runfiles import load_manifest

    init = ("init", "--data-dir", str(tmp_path / "d"), "--task", "toy", "-o", str(tmp_path / "run.toml"))
    proc = in_process(capsys, *init, "--group", "*.bias:freeze", "--group", "*:max_rank=2", "--max-rank", "8")
    assert proc.returncode == 0, proc.stderr
    m = load_manifest(tmp_path / "run.toml")
    assert (m.groups, m.max_rank) == (("*.bias:freeze", "*:max_rank=2"), 8)
    assert_config_error(in_process(capsys, *init, "--group", "*.bias:thaw"), "--group", "bad option 'thaw'")
    proc = in_process(capsys, *init, "--group", "*.bias:strategy=nope")
    assert_config_error(proc, "unknown strategy 'nope'")
    # a group with its own strategy merges gathered: a fixed sliced placement is refused
    proc = in_process(capsys, *init, "--group", "*.bias:strategy=ties", "--placement", "sliced")
    assert_config_error(proc, "--placement sliced", "it runs gathered")


# ---- update make takes --run and --round from the running node, or refuses ---------------------------------


def test_update_make_without_run_and_round_needs_a_node(capsys, tmp_path):
    proc = in_process(capsys, "update", "make", "--data-dir", str(tmp_path), "--base", "b", "--model", "m",
                      "-o", str(tmp_path / "u"))  # fmt: skip
    assert_config_error(proc, "no running node", "--run RUN_ID --round N")


@pytest.mark.parametrize(
    "phase, round_", [("collecting", 4), ("waiting", 4), ("aggregating", 5), ("committed", 5)]
)
def test_update_make_takes_run_and_round_from_the_node(capsys, monkeypatch, tmp_path, phase, round_):
    import safetensors.numpy

    from potluck.cli.update_files import inspect_update
    from potluck.rpc import client
    from potluck.v1 import control_pb2

    class Node:
        def __init__(self, address, timeout):
            assert address == "127.0.0.1:9"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def status(self):
            return control_pb2.GetStatusResponse(run="default", run_id="ab" * 32, round=4, phase=phase)

    monkeypatch.setattr(client, "ControlClient", Node)
    state = {"w": np.arange(64, dtype=np.float32)}
    safetensors.numpy.save_file(state, str(tmp_path / "base.safetensors"))
    safetensors.numpy.save_file({"w": state["w"] + 1}, str(tmp_path / "tuned.safetensors"))
    base, tuned = str(tmp_path / "base.safetensors"), str(tmp_path / "tuned.safetensors")
    proc = in_process(capsys, "update", "make", "--data-dir", str(tmp_path), "--rpc", "127.0.0.1:9",
                      "--base", base, "--model", tuned, "-o", str(tmp_path / "u"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    info = inspect_update((tmp_path / "u").read_bytes())
    assert (info["run"], info["round"]) == ("ab" * 32, round_)
    assert f"round {round_}" in proc.stdout and "127.0.0.1:9" in proc.stdout


# ---- join names its own argument; export refuses a short prefix and takes --round --------------------------


def test_join_names_the_bad_peer_argument(capsys, tmp_path):
    proc = in_process(capsys, "join", "--data-dir", str(tmp_path), "--run", "ab" * 32, "not-a-multiaddr")
    assert_config_error(proc, "'not-a-multiaddr'", "MULTIADDR argument")
    assert "--initial-peers" not in proc.stderr


@pytest.fixture
def history_dir(tmp_path):
    """A data dir whose history holds rounds 0 and 1 (as a node that committed them leaves it)."""
    from potluck.hashing import tensor_hashes, version_hash
    from potluck.identity import NodeIdentity
    from potluck.node import HISTORY_FILE
    from potluck.rounds.commit import Commit, sign_commit
    from potluck.store.history import History
    from potluck.store.versions import VersionStore

    node = NodeIdentity.generate()
    states = [{"w": np.full(4, r, np.float32)} for r in range(3)]
    with History(tmp_path / HISTORY_FILE, VersionStore(tmp_path / "versions")) as history:
        for r in range(2):
            parent, state = version_hash(states[r]), states[r + 1]
            commit = Commit(
                "cd" * 32, r, parent, version_hash(state), tensor_hashes(state),
                updates=[], contributors=[], participants=[node.node_id], total_weight=1,
            )  # fmt: skip
            history.record(commit, [sign_commit(commit, node)], state)
    return tmp_path, [version_hash(s) for s in states[1:]]


def test_export_by_round_or_by_a_long_enough_prefix(capsys, tmp_path, history_dir):
    from potluck.store.versions import load_state

    data_dir, versions = history_dir
    out = tmp_path / "m.safetensors"
    proc = in_process(capsys, "export", "--data-dir", str(data_dir), "--round", "0", "-o", str(out))
    assert proc.returncode == 0 and f"version {versions[0]} (round 0)" in proc.stdout
    assert load_state(out)["w"][0] == 1
    proc = in_process(
        capsys, "export", "--data-dir", str(data_dir), "--version", versions[1][:6], "-o", str(out)
    )
    assert proc.returncode == 0 and f"version {versions[1]} (round 1)" in proc.stdout
    assert_config_error(
        in_process(capsys, "export", "--data-dir", str(data_dir), "--version", "0", "-o", str(out)),
        "at least 6",
        "--round N",
    )
    assert_config_error(
        in_process(capsys, "export", "--data-dir", str(data_dir), "--round", "7", "-o", str(out)), "--round 7"
    )


def test_log_counts_signatures_and_status_names_participants(capsys, history_dir):
    from potluck.cli.format import format_log
    from potluck.rpc.jsonify import message_to_dict
    from potluck.v1 import control_pb2

    data_dir, _ = history_dir
    proc = in_process(capsys, "log", "--data-dir", str(data_dir))
    header, *rows = proc.stdout.splitlines()
    assert proc.returncode == 0 and "SIGNATURES" in header and len(rows) == 2
    assert format_log([]) == "no committed versions yet"
    status = message_to_dict(control_pb2.GetStatusResponse(participants=["ab" * 32] * 3)) | {
        "bootstrap": {"state": "none"}, "uptime_s": 1.0,
    }  # fmt: skip
    text = format_status(status)
    assert "merged by     3 participants" in text and "signed by" not in text


def test_join_leaves_named_shards_to_the_task():
    from potluck.cli.node import _check_shard
    from potluck.errors import ConfigError

    for spec in ("0/4", "plays", "plays:1/2", "dirichlet:0.5:0/4"):
        _check_shard(spec)  # the lm task's domain names pass; the task checks them
    for spec in ("4/4", "plays:2/2", "x/y", "0-4"):
        with pytest.raises(ConfigError, match="bad --shard"):
            _check_shard(spec)


def test_status_prints_the_traffic_in_one_line():
    from potluck.rpc.jsonify import message_to_dict
    from potluck.v1 import control_pb2

    B = control_pb2.TrafficBytes
    traffic = control_pb2.Traffic(
        kernel="ok",
        total=B(sent=2_500_000, recv=1_200, sent_rate=3000.0, recv_rate=1000.0),
        kinds={"records": B(sent=10, recv_rate=1500.0), "dht_upkeep": B(sent_rate=2000.0), "sync": B()},
        window_s=10.0,
    )
    status = message_to_dict(control_pb2.GetStatusResponse(traffic=traffic)) | {
        "bootstrap": {"state": "none"}, "uptime_s": 1.0,
    }  # fmt: skip
    line = next(x for x in format_status(status).splitlines() if x.startswith("traffic"))
    assert (
        line == "traffic       2.5 MB sent, 1.2 KB recv; 4.0 KB/s now (dht_upkeep 2.0 KB/s, records 1.5 KB/s)"
    )
    status["traffic"] = message_to_dict(control_pb2.Traffic(kernel="unavailable: PermissionError", kinds={
        "records": B(sent=100, recv=200)}))  # fmt: skip
    line = next(x for x in format_status(status).splitlines() if x.startswith("traffic"))
    assert line.endswith("100 B sent, 200 B recv; 0 B/s now; kernel counters unavailable: PermissionError")
