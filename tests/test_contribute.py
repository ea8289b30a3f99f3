"""Contributors end to end: `potluck demo` trains the shared model above genesis with every node
agreeing, a contributor leaving mid-round does not stall the run, a third-party task works, and
`potluck join` refuses bad input with exit code 2."""

from __future__ import annotations

import json
import time

import pytest

from potluck.identity import NodeIdentity
from potluck.localswarm import LocalNode, LocalSwarm, wait_for
from potluck.rounds import schedule
from potluck.runfiles import genesis_path, write_run
from potluck.store.versions import atomic_save
from tests.support.cli import potluck

pytestmark = pytest.mark.multiprocess


def make_run(root, task: str, round_seconds: float = 16.0, start_in: float = 20.0):
    run = write_run(
        root / "run.toml", task, round_seconds=round_seconds, start_time=time.time() + start_in, density=0.05
    )
    return run.manifest, run.path


def update_on_genesis(path, manifest, author_dir, round_: int) -> str:
    """`potluck update make` by the key in ``author_dir``: genesis plus noise, on genesis, for ``round_``."""
    import numpy as np

    from potluck.store.versions import load_state

    rng = np.random.default_rng(round_)
    genesis_state = load_state(genesis_path(path))
    tuned = {k: (v + rng.normal(0, 0.1, v.shape)).astype(v.dtype) for k, v in genesis_state.items()}
    author_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(tuned, author_dir / "tuned.safetensors")
    out = author_dir / f"round{round_}.update"
    proc = potluck("update", "make", "--data-dir", str(author_dir), "--base", str(genesis_path(path)),
                   "--model", str(author_dir / "tuned.safetensors"), "--run", manifest.run_id,
                   "--round", str(round_), "--density", "0.1", "-o", str(out), timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-1000:]
    return str(out)


def contributor(swarm: LocalSwarm, i: int, n: int, *extra: str) -> LocalNode:
    """Contributor ``i`` of ``n`` (its shard), 30 local steps a round."""
    return swarm.add_contributor(f"contributor{i}", "--shard", f"{i}/{n}", "--local-steps", "30", *extra)


def test_demo_trains_the_shared_model_above_genesis_and_every_node_agrees():
    proc = potluck("demo", "--contributors", "2", "--rounds", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert len(result["rounds"]) == 2
    for row in result["rounds"]:
        assert row["nodes_agreeing"] == row["nodes"] == 3 and row["contributors"] == 2
        assert row["bytes_sent"] > 0
    assert result["final_accuracy"] > result["genesis_accuracy"] + 0.1


def test_a_contributor_leaving_mid_round_does_not_stall_the_run(tmp_path):
    manifest, path = make_run(tmp_path, "digits")
    with LocalSwarm.for_run(tmp_path / "swarm", manifest.run_id, path) as swarm:
        keeper = swarm.add_node(name="keeper").wait_ready()
        leaver = contributor(swarm, 0, 3)
        stayers = [contributor(swarm, i, 3) for i in (1, 2)]
        for node in swarm.nodes:
            node.wait_ready()
        wait_for(lambda: keeper.status()["committed_round"] >= 0, 60, "round 0")
        r = keeper.status()["committed_round"] + 1
        # leave in the middle of round r's collecting phase
        time.sleep(max(0.0, schedule.round_start(manifest, r) + 4 - time.time()))
        leaver.kill_group()
        swarm.nodes.remove(leaver)
        wait_for(
            lambda: keeper.status()["committed_round"] >= r + 1, 3 * manifest.round_seconds, "two more rounds"
        )

        def agreed() -> bool:
            # a node may commit a moment after the keeper, or (quorum 1) alone and then switch to the
            # fork choice's winner: what must hold is that all of them settle on one version
            statuses = [n.status() for n in [keeper, *stayers]]
            return (
                min(s["committed_round"] for s in statuses) >= r + 1
                and len({s["version"] for s in statuses}) == 1
            )

        wait_for(agreed, 2 * manifest.round_seconds, "the keeper and the stayers to agree on one version")


def test_a_third_party_task_from_an_entry_point(tmp_path):
    manifest, path = make_run(tmp_path, "tests.tasks.custom_task:make", start_in=15.0)
    with LocalSwarm.for_run(tmp_path / "swarm", manifest.run_id, path) as swarm:
        keeper = swarm.add_node(name="keeper").wait_ready()
        author = contributor(swarm, 0, 1, "--task", "tests.tasks.custom_task:make").wait_ready()
        wait_for(lambda: keeper.status()["committed_round"] >= 0, 60, "a committed round")
        wait_for(lambda: keeper.status()["accuracy"] >= 0, 10, "the evaluation")
        log = json.loads(potluck("log", "--data-dir", str(keeper.data_dir), "--json").stdout)
        assert log[0]["updates"] == 1 and log[0]["contributors"] == [author.status()["node_id"]]
        assert 0.0 <= keeper.status()["accuracy"] <= 1.0 and log[0]["accuracy"] is not None
        # an update built on genesis, a version the keeper has moved on from: stale, not unknown
        assert keeper.status()["version"] != manifest.genesis
        for _ in range(3):  # a round boundary between reading the round and publishing: try again
            st = keeper.status()
            update = update_on_genesis(
                path, manifest, tmp_path / "late", max(st["round"], st["committed_round"] + 1)
            )
            proc = potluck("update", "publish", update, "--data-dir", str(keeper.data_dir), timeout=60)
            if "_round" not in proc.stderr:
                break
        assert proc.returncode == 1 and "stale_base" in proc.stderr, proc.stderr
        assert manifest.genesis[:16] in proc.stderr and st["version"][:16] in proc.stderr


def test_join_refuses_bad_input_with_exit_code_2(tmp_path):
    manifest, path = make_run(tmp_path, "toy", start_in=0)
    base = [
        "join",
        "--data-dir",
        str(tmp_path / "c"),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--join-timeout",
        "3",
    ]
    cases = [
        ([*base, "--manifest", str(path), "--task", "digits"], "trains task 'toy', not 'digits'"),
        ([*base, "--manifest", str(path), "--shard", "5/2"], "--shard"),
        ([*base, "--manifest", str(path), "--shard", "dirichlet:x:0/2"], "Dirichlet ALPHA"),
        # a data dir of its own: one that joined with --manifest keeps the manifest, and needs no peer
        ([*base, "--data-dir", str(tmp_path / "fresh"), "--run", manifest.run_id,
          f"/ip4/127.0.0.1/tcp/1/p2p/{NodeIdentity.generate().peer_id}"], "could not join"),
        ([*base, "--run", "not-a-run-id"], "--run takes a run id"),
        ([*base, "--manifest", str(path), "--lowrank-targets", "*.w"], "--lowrank-targets needs --lowrank"),
        ([*base, "--manifest", str(path), "--lowrank-extras", "*"], "--lowrank-extras needs --lowrank"),
        ([*base, "--manifest", str(path), "--lowrank", "2"], "cannot train low-rank adapters"),
        ([*base, "--manifest", str(path), "--salience", "0.5"], "a task with gradient_scale"),
        ([*base, "--manifest", str(path), "--salience", "-1"], "--salience: must be > 0"),
        ([*base, "--manifest", str(path), "--residual-decay", "1.5"], "--residual-decay: must be in (0, 1]"),
        ([*base, "--manifest", str(path), "--residual-decay", "0"], "--residual-decay: must be > 0"),
    ]  # fmt: skip
    (tmp_path / "lm").mkdir()
    lm = write_run(tmp_path / "lm" / "run.toml", "lm", task_args={"n_layer": 1, "d_model": 32, "n_head": 2},
                   groups=("*.attn.*:max_rank=2",)).path  # fmt: skip
    lm_base = [*base, "--data-dir", str(tmp_path / "lm-c"), "--manifest", str(lm), "--lowrank"]
    cases += [
        ([*lm_base, "4", "--lowrank-targets", "nope.*"], "matches no unfrozen 2-D tensor"),
        ([*lm_base, "4", "--lowrank-targets", "*.attn.c_attn.weight"], "--lowrank 4 is above the limit 2"),
        ([*lm_base, "40", "--lowrank-targets", "*.c_fc.weight"], "--lowrank 40 is above the limit 32"),
        ([*base, "--manifest", str(path), "--module", "m", "--shard", "0/1"], "takes no modules (lm does)"),
        ([*lm_base[:-1], "--module", "m", "--shard", "poetry", "--module-rank", "40"],
         "--module-rank 40 is above the limit 32"),
        ([*lm_base, "2", "--lowrank-extras", "nope.*"], "matches no unfrozen tensor to train"),
        ([*lm_base, "2", "--salience", "0.5"], "--salience needs whole-model training"),
        ([*lm_base, "2", "--residual-decay", "0.9"], "--residual-decay applies to sparse patches"),
        ([*lm_base[:-1], "--fresh-optimizer", "--salience", "0.5"], "--salience needs whole-model training"),
    ]  # fmt: skip
    for args, needle in cases:
        proc = potluck(*args, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr[-1000:])
        assert needle in proc.stderr.strip().splitlines()[-1], proc.stderr[-1000:]


def test_a_client_mode_contributor_pushes_its_updates_to_keepers(tmp_path):
    manifest, path = make_run(tmp_path, "toy", start_in=15.0)
    with LocalSwarm.for_run(tmp_path / "swarm", manifest.run_id, path) as swarm:
        keeper = swarm.add_node(name="keeper").wait_ready()
        client = contributor(swarm, 0, 1, "--client-mode").wait_ready()
        wait_for(lambda: keeper.status()["committed_round"] >= 0, 60, "a committed round")
        client_id = client.status()["node_id"]
        log = json.loads(potluck("log", "--data-dir", str(keeper.data_dir), "--json").stdout)
        assert log[0]["contributors"] == [client_id]  # its update got in, though nobody could fetch from it
        status = keeper.status()
        assert client_id not in status["participants"]  # it cannot be dialed for the all-reduce
        assert any(u["source"] == "pushed" for u in keeper.updates())
        wait_for(lambda: client.status()["version"] == keeper.status()["version"], 20, "the client to follow")


def test_ctrl_c_leaves_cleanly_after_the_current_training_step(tmp_path):
    import signal

    manifest, path = make_run(tmp_path, "toy", start_in=8.0)
    with LocalSwarm.for_run(tmp_path / "swarm", manifest.run_id, path) as swarm:
        swarm.add_node(name="keeper").wait_ready()
        trainer = contributor(swarm, 0, 1, "--local-steps", "100000000").wait_ready()
        wait_for(lambda: "training" in trainer.log_path.read_text(), 40, "training to start")
        started = time.monotonic()
        trainer.signal(signal.SIGINT)
        assert trainer.proc.wait(10) == 0
        assert time.monotonic() - started < 5.0
        assert "stopped after the current training step" in trainer.log_path.read_text()


def test_update_publish_on_a_client_mode_node_reaches_the_keepers_or_fails_loudly(tmp_path):
    """`update publish` goes the contributor's way: a client-mode node pushes to keepers (nobody can
    fetch from it), and says so, exit 1, when no keeper took the update."""
    manifest, path = make_run(tmp_path, "toy", start_in=90.0)  # round 0 (base: genesis) stays open
    with LocalSwarm.for_run(tmp_path / "swarm", manifest.run_id, path) as swarm:
        keeper = swarm.add_node(name="keeper").wait_ready()
        client = contributor(swarm, 0, 1, "--client-mode").wait_ready()
        wait_for(lambda: client.status()["peers"] >= 1, 30, "the client to see the keeper")
        wait_for(lambda: client.status()["phase"] != "idle", 30, "the client to fetch the manifest")
        proc = potluck(
            "update",
            "publish",
            update_on_genesis(path, manifest, tmp_path / "author", 0),
            "--data-dir",
            str(client.data_dir),
            "--json",
        )
        assert proc.returncode == 0, proc.stderr[-1000:]
        update_id = json.loads(proc.stdout)["update_id"]
        published = time.monotonic()
        wait_for(
            lambda: any(u["update_id"] == update_id for u in keeper.updates()), 5, "the keeper to hold it"
        )
        assert time.monotonic() - published < 5
        assert next(u for u in keeper.updates() if u["update_id"] == update_id)["source"] == "pushed"

        keeper.stop()
        proc = potluck(
            "update",
            "publish",
            update_on_genesis(path, manifest, tmp_path / "other", 0),
            "--data-dir",
            str(client.data_dir),
            timeout=90,
        )
        assert proc.returncode == 1, proc.stdout
        assert "no_keeper" in proc.stderr and "client mode" in proc.stderr, proc.stderr
        assert "published" not in proc.stdout


def test_a_run_with_sign_values_and_model_top_k_commits_its_contributors_updates(tmp_path):
    """Value encoding 2 and Rice indices (the smallest here) through the whole path: a contributor's
    error feedback, the keeper's validator, the merge; in the run's sparse start (2%, not 5%)."""
    import numpy as np

    from potluck.store.versions import load_state
    from potluck.updates.codec import parse_update
    from potluck.updates.sparsify import k_for

    run = write_run(tmp_path / "run.toml", "toy", round_seconds=16.0, start_time=time.time() + 15.0,
                    density=0.05, values="sign", topk_scope="model", start_density=0.02,
                    start_rounds=100)  # fmt: skip
    with LocalSwarm.for_run(tmp_path / "swarm", run.manifest.run_id, run.path) as swarm:
        keeper = swarm.add_node(name="keeper").wait_ready()
        member = contributor(swarm, 0, 1).wait_ready()
        wait_for(lambda: keeper.status()["committed_round"] >= 0, 60, "a committed round")
        log = json.loads(potluck("log", "--data-dir", str(keeper.data_dir), "--json").stdout)
        assert log[0]["contributors"] == [member.status()["node_id"]]
        status = keeper.status()
        assert status["accepted_updates"] >= 1 and not any(status["rejected_updates"].values())
        wait_for(
            lambda: member.status()["version"] == keeper.status()["version"], 20, "the contributor to follow"
        )
        numel = sum(int(np.size(v)) for v in load_state(genesis_path(run.path)).values())
        updates = [parse_update(p.read_bytes()) for p in (keeper.data_dir / "updates").glob("*.update")]
        sent = [sum(t.nnz for t in u.tensors) for u in updates]
        # the sign survivors may drop a few of the 2%; 5% would be 2.5 times as many
        assert sent and all(k_for(numel, 0.02) // 2 < n <= k_for(numel, 0.02) for n in sent), (sent, numel)
