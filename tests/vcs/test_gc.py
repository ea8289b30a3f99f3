"""`potluck gc` on a chained store, and the commands reading versions kept as patches."""

from __future__ import annotations

import json

from potluck.datadir import DataDirLock
from potluck.store.versions import VersionStore
from potluck.vcs.replay import verify
from potluck.vcs.repo import HistoryRepo
from tests.cli.test_cli import assert_config_error, in_process
from tests.vcs.conftest import build_history


def test_a_chained_history_verifies_and_a_damaged_patch_fails_at_its_round(tmp_path) -> None:
    b = build_history(tmp_path, rounds=5, snapshot_every=3)
    store = VersionStore(b.data_dir / "versions")
    kinds = ["patch" if store.is_patch(v) else "snapshot" for v in b.versions]
    assert kinds == ["snapshot", "patch", "patch", "snapshot", "patch", "patch"]
    with HistoryRepo(b.data_dir) as repo:
        assert verify(repo)["ok"]
    path = store.patch_path(b.versions[2])  # round 1's version
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x08
    path.write_bytes(bytes(data))
    with HistoryRepo(b.data_dir) as repo:
        report = verify(repo)
    assert (report["ok"], report["round"], report["version"]) == (False, 1, b.versions[2])
    assert "damaged" in report["what"]


def test_gc_keeps_the_last_and_every_mth_and_rewrites_what_lost_its_parent(tmp_path, capsys) -> None:
    b = build_history(tmp_path, rounds=6, snapshot_every=3)
    dd = str(b.data_dir)
    store = VersionStore(b.data_dir / "versions")
    before = {v: store.is_patch(v) for v in b.versions}
    plan = json.loads(
        in_process(
            capsys, "gc", "--keep-last", "2", "--keep-every", "3", "--dry-run", "--json", "--data-dir", dd
        ).stdout
    )
    assert [d["round"] for d in plan["dropped"]] == [1, 2]
    assert plan["rewritten_whole"] == [b.versions[4]]  # round 3's patch of round 2's snapshot
    assert all(store.has(v) for v in b.versions)  # a dry run deletes nothing
    proc = in_process(capsys, "gc", "--keep-last", "2", "--keep-every", "3", "--data-dir", dd)
    assert proc.returncode == 0 and "dropped 2 version(s)" in proc.stdout
    assert [store.has(v) for v in b.versions] == [True, True, False, False, True, True, True]
    assert not store.is_patch(b.versions[4]) and before[b.versions[4]]
    for v in b.versions:
        if store.has(v):
            store.get(v)  # every kept version still materialises to its hash
    with HistoryRepo(b.data_dir) as repo:
        assert verify(repo)["ok"]  # the replay needs the genesis and the updates only
    proc = in_process(capsys, "diff", "r1", "r4", "--data-dir", dd)
    assert_config_error(proc, "is not stored", "no node runs on")  # nothing to fetch it from peers


def test_gc_refuses_while_a_node_holds_the_data_dir(tmp_path, capsys) -> None:
    b = build_history(tmp_path, rounds=2)
    lock = DataDirLock(b.data_dir)
    lock.acquire()
    try:
        proc = in_process(capsys, "gc", "--keep-last", "1", "--data-dir", str(b.data_dir))
    finally:
        lock.release()
    assert_config_error(proc, "in use")
    assert all(VersionStore(b.data_dir / "versions").has(v) for v in b.versions)


def test_gc_keeps_the_versions_a_history_aware_merge_needs(tmp_path, capsys) -> None:
    b = build_history(tmp_path, rounds=6, strategy="history_clip")  # it merges with the last 4 commits
    dd = str(b.data_dir)
    proc = in_process(capsys, "gc", "--keep-last", "1", "--json", "--data-dir", dd)
    report = json.loads(proc.stdout)
    assert report["kept_for_history"] == 5
    assert [d["round"] for d in report["dropped"]] == [0]  # rounds 1-5 stay: V_2..V_6, with the genesis
    store = VersionStore(b.data_dir / "versions")
    assert [store.has(v) for v in b.versions] == [True, False, True, True, True, True, True]
