"""show, diff, blame, revert and verify on the data dirs of real nodes (versions kept as patches, a
snapshot every 2): 3 nodes commit 3 rounds, then a fourth that merges a revert of one author's first
update (the same bytes on every node); diff and blame agree with numbers computed here from the published
updates and the stored versions (that author's blame back at 0); verify passes on every node, and fails
at the right round once a byte of an old update is flipped (in a copy). A newcomer that synced only the
latest version diffs against round 0's, fetched from its peers, with the same numbers. A fork of a run,
run by a node of its own, commits a round and `log` follows its lineage."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from potluck.localswarm import wait_for
from potluck.runfiles import load_manifest
from potluck.store.versions import VersionStore
from potluck.updates.codec import decode_update
from tests.engine.test_engine import AUTHORS, ROUND_S, Run
from tests.support.cli import potluck, potluck_json
from tests.support.swarm import connected_swarm
from tests.vcs.conftest import build_history

pytestmark = pytest.mark.multiprocess
ROUNDS = 3


def _wait_committed(swarm, r: int) -> None:
    wait_for(lambda: all(n.status()["committed_round"] >= r for n in swarm.nodes), ROUND_S + 10, f"round {r}")


@pytest.mark.timeout(600)  # a busy machine slows the nodes' start
def test_three_nodes_show_diff_blame_revert_and_verify_their_history(tmp_path):
    """AUTHORS[0] contributes to the first round only (node 0 publishes AUTHORS[3]'s updates after it);
    a fourth round merges a revert of that update, published by node 0's key through `potluck revert
    --publish` (the run lets anyone revert)."""
    run = Run(tmp_path, revert="anyone")
    # versions kept as patches between snapshots every 2: what verify, diff and the catch-up read back
    with connected_swarm(
        tmp_path / "swarm", 3, manifest=run.path, extra_args=["--snapshot-every", "2"]
    ) as swarm:
        rounds = []
        for k in range(ROUNDS):
            r = run.next_collecting_round()
            for i, node in enumerate(swarm.nodes):
                author = AUTHORS[3 if i == 0 and k else i]
                run.publish(node, author, r, seed=10 * k + i, density=0.03)  # patches stay small
            _wait_committed(swarm, r)
            rounds.append(r)
        first = decode_update(run.published[rounds[0]][0][1]).update_id  # AUTHORS[0]'s only update
        r = run.next_collecting_round()
        out = potluck("revert", first, "--publish", "--data-dir", str(swarm.nodes[0].data_dir), "--json",
                      check=True)  # fmt: skip
        undo = json.loads(out.stdout)["published"]
        _wait_committed(swarm, r)
        rounds.append(r)
        dirs = [n.data_dir for n in swarm.nodes]
        # a newcomer syncs the latest version only; diff fetches round 0's from the peers, once
        newcomer = swarm.add_node(name="newcomer").wait_ready()
        latest = swarm.nodes[0].status()["version"]
        wait_for(lambda: newcomer.status()["version"] == latest, 40, "the newcomer to sync")
        assert [e["round"] for e in potluck_json("log", "--data-dir", str(newcomer.data_dir))] == [r]
        fresh = [potluck_json("diff", f"r{rounds[0]}", "latest", "--data-dir", str(newcomer.data_dir))
                 for _ in range(2)]  # fmt: skip
        missing = potluck("diff", "r999", "latest", "--data-dir", str(newcomer.data_dir))
    assert [d["fetched"] for d in fresh] == [[fresh[0]["a"]], []]  # stored by the first call
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "no commit of round 999 with the quorum's" in missing.stderr
    log = potluck_json("log", "--data-dir", str(dirs[0]))
    assert [e["round"] for e in log] == rounds and [e["updates"] for e in log] == [3] * ROUNDS + [1]
    assert [e["reverts"] for e in log] == [[]] * ROUNDS + [[first]]
    for d in dirs[1:]:  # the same commits, and the revert's same bytes, on every node
        assert [e["version"] for e in potluck_json("log", "--data-dir", str(d))] == [
            e["version"] for e in log
        ]
        assert (d / "updates" / f"{undo}.update").read_bytes() == (
            dirs[0] / "updates" / f"{undo}.update"
        ).read_bytes()

    assert any(VersionStore(d / "versions").is_patch(e["version"]) for d in dirs for e in log)
    for d in dirs:  # every node replays its whole history bit for bit, the revert's round included
        report = potluck_json("verify", "--data-dir", str(d))
        assert report["ok"] and report["rounds"] == ROUNDS + 1 and report["updates"] == 3 * ROUNDS + 1, report

    shown = potluck_json("show", f"r{rounds[1]}", "--data-dir", str(dirs[1]))
    assert shown["quorum_met"] and shown["parent"] == log[0]["version"]
    assert {u["author"] for u in shown["updates"]} == {a.node_id for a in AUTHORS[1:4]}
    shown = potluck_json("show", f"r{rounds[-1]}", "--data-dir", str(dirs[2]))
    assert [(u["update_id"], u["reverts"], u["weight"]) for u in shown["updates"]] == [(undo, [first], 0)]

    # the revert's round moved the model by minus AUTHORS[0]'s merged term: lr * w * delta / W of round 0
    lr = run.manifest.outer_lr
    versions = VersionStore(dirs[1] / "versions")
    before, after = versions.get(log[-2]["version"]), versions.get(log[-1]["version"])
    w0, total0 = run.published[rounds[0]][0][0], sum(w for w, _ in run.published[rounds[0]])
    reverted = decode_update(run.published[rounds[0]][0][1]).update
    for s in reverted.tensors:
        expected = before[s.name].astype(np.float64).reshape(-1).copy()
        expected[s.indices] -= lr * w0 * s.values.astype(np.float64) / total0
        np.testing.assert_allclose(after[s.name].reshape(-1), expected, rtol=0, atol=1e-6)

    # diff r0..latest against numpy on the stored versions (the same files on every node)
    versions = VersionStore(dirs[2] / "versions")
    a, b = versions.get(log[0]["version"]), versions.get(log[-1]["version"])
    diff = potluck_json("diff", f"r{rounds[0]}", "latest", "--data-dir", str(dirs[1]))
    assert diff["fetched"] == [] and all(d | {"fetched": []} == diff for d in fresh)  # the same numbers
    for t in diff["tensors"]:
        change = b[t["name"]].astype(np.float64) - a[t["name"]].astype(np.float64)
        assert t["l2"] == pytest.approx(np.linalg.norm(change))
        assert t["changed"] == int(np.count_nonzero(change))

    # blame over every round against lr * w * delta / W of the published updates
    # (the revert counted against AUTHORS[0]: minus their one term, so their share is back at 0)
    blame = potluck_json("blame", "--data-dir", str(dirs[0]))
    for t in blame["tensors"]:
        moved: dict[str, np.ndarray] = {}
        for r in rounds[:ROUNDS]:
            total = sum(w for w, _ in run.published[r])
            for w, data in run.published[r]:
                u = decode_update(data).update
                for s in u.tensors:
                    if s.name == t["name"]:
                        m = moved.setdefault(u.author.hex(), np.zeros(int(np.prod(s.shape))))
                        m[s.indices] += lr * w * s.values.astype(np.float64) / total
        for s in reverted.tensors:
            if s.name == t["name"]:
                moved[reverted.author.hex()][s.indices] -= lr * w0 * s.values.astype(np.float64) / total0
                row = next(a for a in t["authors"] if a["author"] == AUTHORS[0].node_id)
                assert abs(row["share"]) < 1e-9 and row["l2"] < 1e-12, row
        got = {row["author"]: row for row in t["authors"]}
        assert set(got) == set(moved)
        whole = sum(moved.values())
        for author, m in moved.items():
            assert got[author]["l2"] == pytest.approx(np.linalg.norm(m), rel=1e-5)
            assert got[author]["share"] == pytest.approx(m @ whole / (whole @ whole), rel=1e-4, abs=1e-9)

    # one flipped byte of round 1's first update, in a copy: verify fails at that round
    copy = tmp_path / "copy"
    shutil.copytree(dirs[0], copy, ignore=shutil.ignore_patterns("lock", "api", "*.sock"))
    target = sorted(potluck_json("show", f"r{rounds[1]}", "--data-dir", str(copy))["updates"],
                    key=lambda u: u["update_id"])[0]["update_id"]  # fmt: skip
    path = copy / "updates" / f"{target}.update"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    proc = potluck("verify", "--data-dir", str(copy))
    assert proc.returncode == 1 and f"round {rounds[1]}, version {log[1]['version'][:16]}" in proc.stderr
    assert target[:16] in proc.stderr


def test_a_fork_runs_on_a_real_node_and_log_follows_its_lineage(tmp_path):
    """A fork of round 1's version of a run (built here, quorum 1), run by a real node: it commits a round
    on top of that version, `log` shows the lineage and lists the parent's rounds, verify passes."""
    parent = build_history(tmp_path, rounds=3, quorum=1, round_seconds=ROUND_S, density=0.25)
    fork_path = tmp_path / "fork.toml"
    potluck("fork", "--from", f"{tmp_path / 'run.toml'}@r1", "-o", str(fork_path), "--data-dir",
            str(parent.data_dir), check=True)  # fmt: skip
    forked = Run.__new__(Run)  # the engine tests' publishing helper, for the forked run's manifest
    forked.manifest, forked.path, forked.published = load_manifest(fork_path), fork_path, {}
    assert (forked.manifest.parent_run, forked.manifest.genesis) == (
        parent.manifest.run_id,
        parent.versions[2],
    )
    with connected_swarm(tmp_path / "fork-swarm", 1, manifest=fork_path) as swarm:
        node = swarm.nodes[0]
        r = forked.next_collecting_round()
        forked.publish(node, AUTHORS[4], r, seed=99)
        wait_for(lambda: node.status()["committed_round"] >= r, ROUND_S + 10, f"the fork's round {r}")
        fork_dir = node.data_dir
    lineage = potluck_json("log", "--data-dir", str(fork_dir), "--parent-data-dir", str(parent.data_dir))
    assert [(e["run_id"], e["round"]) for e in lineage] == [
        (parent.manifest.run_id, 0), (parent.manifest.run_id, 1), (forked.manifest.run_id, r)
    ]  # fmt: skip
    assert lineage[-1]["parent"] == parent.versions[2]
    text = potluck("log", "--data-dir", str(fork_dir), check=True).stdout
    assert f"forked from run {parent.manifest.run_id[:16]} at version {parent.versions[2][:16]}" in text
    assert potluck_json("verify", "--data-dir", str(fork_dir))["ok"]


def test_blame_of_a_norm_filter_run_on_real_nodes(tmp_path):
    """3 nodes merge a round of 4 updates with norm_filter (reject 4, clip 2 x the lower median norm):
    AUTHORS[2]'s is 3x the others' (clipped to 2x the median norm), AUTHORS[3]'s (published by node 0)
    10x (dropped). blame's numbers are each update's s_u * x_u / kept * outer_lr, computed here from the
    published updates, and add up to the versions' difference."""
    run = Run(tmp_path, strategy="norm_filter")
    with connected_swarm(tmp_path / "swarm", 3, manifest=run.path) as swarm:
        r = run.next_collecting_round()
        for i, node in enumerate(swarm.nodes):
            run.publish(node, AUTHORS[i], r, seed=i, scale=3.0 if i == 2 else 1.0)
        run.publish(swarm.nodes[0], AUTHORS[3], r, seed=3, scale=10.0)
        _wait_committed(swarm, r)
        rounds = [r]
        data_dir = swarm.nodes[1].data_dir
    lr = run.manifest.outer_lr
    moved: dict[str, dict[str, np.ndarray]] = {}
    scales = []
    for r in rounds:
        ups = [decode_update(data).update for _, data in run.published[r]]
        norms = [np.sqrt(sum(float(s.values.astype(np.float64) @ s.values) for s in u.tensors)) for u in ups]
        med = sorted(norms)[(len(norms) - 1) // 2]
        s = [0.0 if n > 4 * med else min(1.0, 2 * med / n) for n in norms]
        scales.append(s)
        for u, factor in zip(ups, s, strict=True):
            for t in u.tensors:
                m = moved.setdefault(u.author.hex(), {}).setdefault(t.name, np.zeros(int(np.prod(t.shape))))
                m[t.indices] += lr * factor * t.values.astype(np.float64) / sum(1 for f in s if f)
    assert sorted(scales[0]) == [0, scales[0][2], 1, 1] and 0 < scales[0][2] < 1  # one dropped, one clipped
    blame = potluck_json("blame", "--data-dir", str(data_dir))
    assert blame["rounds"] == rounds and blame["attribution"] == ["exact"]
    versions, log = VersionStore(data_dir / "versions"), potluck_json("log", "--data-dir", str(data_dir))
    first, last = versions.get(log[0]["parent"]), versions.get(log[-1]["version"])
    for t in blame["tensors"]:
        got = {a["author"]: a for a in t["authors"]}
        mine = {a: m[t["name"]] for a, m in moved.items() if np.any(m[t["name"]])}
        whole = sum(mine.values())
        assert set(got) == set(mine)
        for author, m in mine.items():
            assert got[author]["l2"] == pytest.approx(np.linalg.norm(m), rel=1e-9)
            assert got[author]["share"] == pytest.approx(m @ whole / (whole @ whole), rel=1e-6, abs=1e-12)
        change = last[t["name"]].astype(np.float64) - first[t["name"]]
        np.testing.assert_allclose(whole, change.reshape(-1), rtol=0, atol=1e-6)  # up to the float32 casts
    assert potluck_json("verify", "--data-dir", str(data_dir))["ok"]
