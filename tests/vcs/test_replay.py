"""`potluck verify`: a clean history replays bit for bit; one flipped byte is found at its round."""

from __future__ import annotations

import dataclasses
import json

from potluck.rounds.commit import sign_commit
from potluck.store.history import HISTORY_FILE, History
from potluck.store.versions import VersionStore
from potluck.vcs.replay import verify
from potluck.vcs.repo import HistoryRepo
from tests.cli.test_cli import in_process
from tests.vcs.conftest import Built, build_history


def _flip(path, offset_from_end: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_clean_history_verifies(built: Built) -> None:
    with HistoryRepo(built.data_dir) as repo:
        report = verify(repo)
    assert report["ok"], report
    assert (report["rounds"], report["signatures"], report["updates"]) == (3, 6, 6)
    assert report["latest"] == built.versions[-1]


def test_verify_from_a_stored_version_replays_only_what_follows(built: Built, capsys) -> None:
    proc = in_process(capsys, "verify", "--data-dir", str(built.data_dir), "--from", "r1", "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"] and report["rounds"] == 1


def test_a_flipped_byte_of_an_old_update_fails_at_its_round(built: Built, capsys) -> None:
    _flip(built.data_dir / "updates" / f"{built.updates[1][0]}.update")
    proc = in_process(capsys, "verify", "--data-dir", str(built.data_dir))
    assert proc.returncode == 1
    assert f"round 1, version {built.versions[2][:16]}" in proc.stderr
    assert built.updates[1][0][:16] in proc.stderr
    with HistoryRepo(built.data_dir) as repo:
        report = verify(repo)
    assert (report["ok"], report["round"], report["version"]) == (False, 1, built.versions[2])


def test_a_flipped_byte_of_an_old_version_fails_at_its_round(built: Built) -> None:
    _flip(built.data_dir / "versions" / f"{built.versions[1]}.safetensors")
    with HistoryRepo(built.data_dir) as repo:
        report = verify(repo)
    assert (report["ok"], report["round"], report["version"]) == (False, 0, built.versions[1])
    assert "stored version file is damaged" in report["what"]


def test_a_damaged_genesis_fails_before_round_zero(built: Built) -> None:
    _flip(built.data_dir / "versions" / f"{built.versions[0]}.safetensors")
    with HistoryRepo(built.data_dir) as repo:
        report = verify(repo)
    assert (report["ok"], report["round"], report["version"]) == (False, None, built.versions[0])


def test_a_signed_version_that_is_not_the_merge_fails_at_its_round(tmp_path) -> None:
    b = build_history(tmp_path, tamper=1)
    with HistoryRepo(b.data_dir) as repo:
        report = verify(repo)
    assert (report["ok"], report["round"], report["version"]) == (False, 1, b.versions[2])
    assert "not the committed" in report["what"] and "l2.bias" in report["what"]
    assert "l1.weight" not in report["what"]


def test_too_few_signatures_is_a_quorum_failure(built: Built) -> None:
    with History(built.data_dir / HISTORY_FILE) as history:
        history._db.execute("DELETE FROM signatures WHERE rowid IN (SELECT rowid FROM signatures LIMIT 1)")
        r = history._db.execute(
            "SELECT c.round FROM commits c WHERE (SELECT COUNT(*) FROM signatures s"
            " WHERE s.commit_id = c.commit_id) = 1"
        ).fetchone()[0]
    with HistoryRepo(built.data_dir) as repo:
        report = verify(repo)
    assert (report["ok"], report["round"]) == (False, r)
    assert "quorum is 2" in report["what"]


def test_probation_weights_are_replayed(tmp_path) -> None:
    """Round 0's updates weighed 0 (both authors on probation): the replay gives them 0 and agrees."""
    b = build_history(tmp_path, rounds=2, probation_rounds=1)
    assert b.versions[1] == b.versions[0]  # nothing merged in round 0
    with HistoryRepo(b.data_dir) as repo:
        assert verify(repo)["ok"]
        assert [u.weight for u in repo.merged_updates(repo.commit(0))] == [0, 0]
        assert all(u.weight for u in repo.merged_updates(repo.commit(1)))


HISTORY_SPEC = "tests.support.history_strategy:step_clip"  # history_rounds = 1


def test_a_history_aware_merge_is_replayed_with_the_steps_before_it(tmp_path) -> None:
    b = build_history(tmp_path, rounds=4, strategy=HISTORY_SPEC)
    with HistoryRepo(b.data_dir) as repo:
        report = verify(repo)
        assert report["ok"] and report["rounds"] == 4, report
        # from a stored version: the step before it comes from the stored versions
        assert verify(repo, start=b.versions[2])["ok"]
    # without that version the replay cannot have the step: one line that says so
    (b.data_dir / "versions" / f"{b.versions[1]}.safetensors").unlink()
    with HistoryRepo(b.data_dir) as repo:
        report = verify(repo, start=b.versions[2])
    assert (report["ok"], report["round"]) == (False, 2), report
    assert "needs the steps of the last 1 commits" in report["what"] and b.versions[1][:16] in report["what"]


def test_a_merge_that_ignored_the_history_fails_where_the_history_begins(tmp_path) -> None:
    """Signed versions merged without the steps before them (round 0 has none, so it still agrees)."""
    b = build_history(tmp_path, rounds=3, strategy=HISTORY_SPEC, history_off=True)
    with HistoryRepo(b.data_dir) as repo:
        report = verify(repo)
    assert (report["ok"], report["round"], report["version"]) == (False, 1, b.versions[2]), report
    assert "not the committed" in report["what"]


def test_a_round_that_merged_nothing_is_no_step_of_the_history(tmp_path) -> None:
    """Round 0 merges nothing (both authors on probation: its version is the genesis): the history of
    round 2 is round 1's step alone, in the replay as in the merge that built it."""
    b = build_history(tmp_path, rounds=3, probation_rounds=1, strategy=HISTORY_SPEC)
    assert b.versions[1] == b.versions[0]
    with HistoryRepo(b.data_dir) as repo:
        assert repo.history.parent_of(b.versions[0]) is None  # round 0 did not change the model
        assert repo.history.parent_of(b.versions[2]) == b.versions[0]
        report = verify(repo)
    assert report["ok"] and report["rounds"] == 3, report


def test_a_commit_that_names_a_record_the_run_does_not_keep_fails_at_its_round(tmp_path) -> None:
    """Signed by its participants, yet a probe record in a run without one: the replay says so."""
    b = build_history(tmp_path, rounds=2)
    with History(b.data_dir / HISTORY_FILE, VersionStore(b.data_dir / "versions")) as history:
        commit = dataclasses.replace(history.get(1), record=((b.authors[0].node_id, 1.0),))
        history.record(commit, [sign_commit(commit, i) for i in b.authors], replace=True)
    with HistoryRepo(b.data_dir) as repo:
        report = verify(repo)
    assert (report["ok"], report["round"]) == (False, 1), report
    assert report["what"] == "it names a probe record, and the run keeps none"
