"""`potluck revert`: the signed proposal, who may revert, which updates can be, and the arithmetic that
takes one update's merged contribution back out (tests/vcs/conftest.py builds the histories)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from potluck.identity import NodeIdentity, load_or_create
from potluck.manifest import Manifest, ManifestError
from potluck.merge import get_strategy
from potluck.rounds.fixedpoint import Layout, next_version
from potluck.rounds.merging import merge_round
from potluck.store.updates import UpdateStore
from potluck.store.versions import load_state
from potluck.updates.codec import decode_update, parse_update
from potluck.updates.reasons import Reason, UpdateRejected
from potluck.vcs import revert
from potluck.vcs.numbers import merged_step
from potluck.vcs.replay import verify
from potluck.vcs.repo import HistoryRepo
from tests.cli.test_cli import assert_config_error, in_process
from tests.vcs.conftest import Built, build_history, commit_revert, make_update


def _state(b: Built, i: int) -> dict[str, np.ndarray]:
    return load_state(b.data_dir / "versions" / f"{b.versions[i]}.safetensors")


def _author_update(b: Built, r: int, author: int) -> str:
    key = b.authors[author].public_key
    store = UpdateStore(b.data_dir / "updates")
    return next(u for u in b.updates[r] if decode_update(store.get(u)).update.author == key)


def test_record_round_trips_and_a_flipped_byte_is_refused() -> None:
    me = NodeIdentity.generate()
    ids = ["b" * 64, "a" * 64, "a" * 64]
    r = revert.parse(revert.sign(me, "c" * 64, ids))
    assert r == revert.Revert("c" * 64, me.public_key, ("a" * 64, "b" * 64))
    data = bytearray(revert.sign(me, "c" * 64, ids))
    data[-1] ^= 1
    with pytest.raises(revert.RevertError, match="revert_malformed"):
        revert.parse(bytes(data))
    with pytest.raises(ValueError):
        revert.sign(me, "c" * 64, ["xyz"])


def test_manifest_rule_is_omitted_at_its_default_so_run_ids_stay(tmp_path: Path) -> None:
    b = build_history(tmp_path, rounds=1)
    assert b"revert" not in b.manifest.body()
    assert b.manifest.revert == "creator"
    values = b.manifest.field_values() | {"revert": "anyone", "genesis": b.manifest.genesis}
    assert b"revert" in Manifest(**values).body()
    with pytest.raises(ManifestError, match="revert"):
        Manifest(**(values | {"revert": "everyone"}))


def test_who_may_revert_is_the_manifests_rule(tmp_path: Path) -> None:
    creator, other = NodeIdentity.generate(), NodeIdentity.generate()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    b = build_history(tmp_path / "a", rounds=1, creator=creator)
    uid = b.updates[0][0]
    with HistoryRepo(b.data_dir) as repo:
        assert len(revert.check(repo, revert.parse(revert.sign(creator, b.manifest.run_id, [uid])))) == 1
        with pytest.raises(revert.RevertError, match="revert_not_allowed"):
            revert.check(repo, revert.parse(revert.sign(other, b.manifest.run_id, [uid])))
        with pytest.raises(revert.RevertError, match="revert_wrong_run"):
            revert.check(repo, revert.parse(revert.sign(creator, "d" * 64, [uid])))
    allow = build_history(tmp_path / "b", rounds=1, revert="allowlist", allow=[other.node_id])
    with HistoryRepo(allow.data_dir) as repo:
        signed = revert.sign(other, allow.manifest.run_id, [allow.updates[0][0]])
        assert revert.check(repo, revert.parse(signed))[0].round == 0


def test_unknown_and_never_merged_updates_are_refused(tmp_path: Path) -> None:
    me = NodeIdentity.generate()
    b = build_history(tmp_path, rounds=1, revert="anyone")
    stray = decode_update(make_update(me, b.manifest, 0, b.versions[0], seed=99))
    UpdateStore(b.data_dir / "updates").put(
        stray.update_id, make_update(me, b.manifest, 0, b.versions[0], seed=99)
    )
    with HistoryRepo(b.data_dir) as repo:
        for uid, reason in (("e" * 64, "revert_unknown_update"), (stray.update_id, "revert_not_merged")):
            with pytest.raises(revert.RevertError, match=reason):
                revert.check(repo, revert.parse(revert.sign(me, b.manifest.run_id, [uid])))


def test_revert_takes_out_exactly_the_merged_contribution(tmp_path: Path) -> None:
    """Reverting author 0's round-0 update after 3 rounds leaves genesis + every other merged term,
    within the float32 casts of the rounds in between; later updates keep their own deltas."""
    b = build_history(tmp_path, rounds=3, revert="anyone")
    uid = _author_update(b, 0, 0)
    me = NodeIdentity.generate()
    with HistoryRepo(b.data_dir) as repo:
        targets = revert.check(repo, revert.parse(revert.sign(me, b.manifest.run_id, [uid])))
        latest, genesis = _state(b, -1), _state(b, 0)
        layout = Layout.from_state(latest)
        step = revert.revert_step(layout, targets, b.manifest.outer_lr)
        reverted = next_version(
            latest, layout, np.zeros(layout.length, np.int64), 0, b.manifest.outer_lr, step
        )
        kept = {s.name: np.zeros(s.size) for s in layout.slots}
        for e in repo.log:
            for mu in repo.merged_updates(repo.commit(e["round"])):
                if mu.update_id == uid:
                    continue
                terms = merged_step(layout, mu.weight, mu.signed, e_total(repo, e), b.manifest.outer_lr)
                for name, t in terms.items():
                    kept[name] += t
    assert set(step) == {"l1.weight", "l2.bias"}
    for name in (s.name for s in layout.slots):
        expected = genesis[name].astype(np.float64).reshape(-1) + kept[name]
        np.testing.assert_allclose(reverted[name].reshape(-1), expected, rtol=0, atol=1e-6)
        if name in step:  # the tensors the reverted update touched move back by its contribution
            assert np.abs(latest[name].reshape(-1) - expected).max() > 1e-3
        else:
            assert np.array_equal(reverted[name], latest[name])


def test_merge_round_applies_the_step_with_the_rounds_updates_for_the_weighted_mean_only(
    tmp_path: Path,
) -> None:
    b = build_history(tmp_path, rounds=1, revert="anyone")
    state = _state(b, 1)
    layout = Layout.from_state(state)
    signed = decode_update(make_update(b.authors[0], b.manifest, 1, b.versions[1], seed=7))
    step = {"l2.bias": np.full(4, 1e-2)}
    merged, total = merge_round(state, layout, [(10, signed)], b.manifest, None, 0, extra=step)
    plain, _ = merge_round(state, layout, [(10, signed)], b.manifest, None, 0)
    assert total == 10 and [n for n in state if not np.array_equal(merged[n], plain[n])] == ["l2.bias"]
    np.testing.assert_allclose(merged["l2.bias"], plain["l2.bias"] + 1e-2, atol=1e-6)
    with pytest.raises(ValueError, match="weighted-mean"):
        merge_round(
            state, layout, [(10, signed)], b.manifest, get_strategy("coordinate_median", {}), 0, extra=step
        )


def e_total(repo: HistoryRepo, e: dict) -> int:
    return repo.commit(e["round"]).total_weight


def test_cli_writes_a_signed_proposal_and_refuses_bad_input_in_one_line(tmp_path: Path, capsys) -> None:
    b = build_history(tmp_path, rounds=2, revert="anyone")
    me = load_or_create(b.data_dir)
    out = tmp_path / "revert.bin"
    a0 = b.authors[0].node_id
    proc = in_process(
        capsys, "revert", "--data-dir", str(b.data_dir), "--author", a0, "--rounds", "0..0", "-o", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    r = revert.parse(out.read_bytes())
    assert r.author == me.public_key and r.reverts == (_author_update(b, 0, 0),)
    for args, needle in (
        (["f" * 64], "revert_unknown_update"),
        (["nothex"], "revert_unknown_update"),
        (["--author", a0, "--rounds", "3..1"], "--rounds"),
        (["--author", "ab" * 32], "revert_not_merged"),
        ([], "UPDATE_ID"),
    ):
        assert_config_error(
            in_process(capsys, "revert", "--data-dir", str(b.data_dir), *args, "-o", str(out)), needle
        )
    proc = in_process(capsys, "revert", "--data-dir", str(b.data_dir), _author_update(b, 0, 0))
    assert_config_error(proc, "--publish")
    (tmp_path / "s").mkdir()
    strict = build_history(tmp_path / "s", rounds=1)
    load_or_create(strict.data_dir)
    proc = in_process(
        capsys, "revert", "--data-dir", str(strict.data_dir), strict.updates[0][0], "-o", str(out)
    )
    assert_config_error(proc, "revert_not_allowed")


def test_a_committed_revert_verifies_and_cannot_be_repeated(tmp_path: Path) -> None:
    """A round that merges only a revert (weight 0) moves exactly by its step; verify replays it bit for
    bit; the same update cannot be reverted again, and a round holding a second revert of it skips it."""
    b = build_history(tmp_path, rounds=2, revert="anyone")
    me, uid = NodeIdentity.generate(), _author_update(b, 0, 0)
    before = _state(b, -1)
    rid = commit_revert(b, me, [uid])
    after = _state(b, -1)
    with HistoryRepo(b.data_dir) as repo:
        commit = repo.commit(2)
        assert commit.updates == (rid,) and commit.total_weight == 0
        target = revert.check(repo, revert.Revert(b.manifest.run_id, me.public_key, (uid,)), before=2)
        step = revert.revert_step(Layout.from_state(before), target, b.manifest.outer_lr)
        for name, s in step.items():
            expected = (before[name].astype(np.float64).reshape(-1) + s).astype(before[name].dtype)
            assert np.array_equal(after[name].reshape(-1), expected)
        assert revert.reverted(repo) == {uid: rid}
        report = verify(repo)
        assert report["ok"] and report["rounds"] == 3, report
        hook = revert.validation_hook(b.data_dir, b.manifest)
        again = parse_update(revert.as_update(me, b.manifest.run_id, 3, b.versions[-1], [uid]))
        with pytest.raises(UpdateRejected) as info:
            hook(again)
        assert info.value.reason is Reason.REVERT_ALREADY_REVERTED
        assert (
            revert.round_targets(
                repo, [decode_update(revert.as_update(me, b.manifest.run_id, 3, b.versions[-1], [uid]))], 3
            )
            == []
        )


def test_the_validation_hook_refuses_what_the_round_cannot_merge(tmp_path: Path) -> None:
    me = NodeIdentity.generate()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    b = build_history(tmp_path / "a", rounds=1, revert="anyone")
    run = b.manifest.run_id
    hook = revert.validation_hook(b.data_dir, b.manifest)
    later = _author_update(b, 0, 0)
    cases = [
        (
            parse_update(revert.as_update(me, run, 1, b.versions[-1], ["e" * 64])),
            Reason.REVERT_UNKNOWN_UPDATE,
        ),
        # round 0's own update: the history before round 0 has not merged it
        (parse_update(revert.as_update(me, run, 0, b.versions[0], [later])), Reason.REVERT_NOT_MERGED),
    ]
    strict = build_history(tmp_path / "b", rounds=1)
    u = strict.updates[0][0]
    cases.append(
        (
            parse_update(revert.as_update(me, strict.manifest.run_id, 1, strict.versions[-1], [u])),
            Reason.REVERT_NOT_ALLOWED,
        )
    )
    robust = build_history(tmp_path / "c", rounds=1, revert="anyone", strategy="coordinate_median")
    r = robust.updates[0][0]
    cases.append(
        (
            parse_update(revert.as_update(me, robust.manifest.run_id, 1, robust.versions[-1], [r])),
            Reason.REVERT_UNSUPPORTED,
        )
    )
    for (p, reason), built in zip(cases, [b, b, strict, robust], strict=True):
        with pytest.raises(UpdateRejected) as info:
            revert.validation_hook(built.data_dir, built.manifest)(p)
        assert info.value.reason is reason, info.value
    assert hook(parse_update(revert.as_update(me, run, 1, b.versions[-1], [later]))) is None


def test_show_log_and_blame_know_a_committed_revert(tmp_path: Path, capsys) -> None:
    b = build_history(tmp_path, rounds=2, revert="anyone")
    uid, kept = _author_update(b, 0, 0), _author_update(b, 1, 0)
    rid = commit_revert(b, NodeIdentity.generate(), [uid])
    d = str(b.data_dir)
    shown = json.loads(in_process(capsys, "show", "r2", "--data-dir", d, "--json").stdout)
    assert [(u["update_id"], u["reverts"], u["weight"]) for u in shown["updates"]] == [(rid, [uid], 0)]
    assert f"{rid[:16]} reverts {uid[:16]}" in in_process(capsys, "show", "r2", "--data-dir", d).stdout
    log = json.loads(in_process(capsys, "log", "--data-dir", d, "--json").stdout)
    assert [e["reverts"] for e in log] == [[], [], [uid]]
    assert f"round 2 reverts {uid[:16]}" in in_process(capsys, "log", "--data-dir", d).stdout
    # blame counts the revert against author 0: what is left of theirs is their round-1 update alone
    blame = json.loads(in_process(capsys, "blame", "--data-dir", d, "--json").stdout)
    with HistoryRepo(b.data_dir) as repo:
        layout = Layout.from_state(_state(b, -1))
        mu = next(m for m in repo.merged_updates(repo.commit(1)) if m.update_id == kept)
        left = merged_step(layout, mu.weight, mu.signed, repo.commit(1).total_weight, b.manifest.outer_lr)
    a0 = b.authors[0].node_id
    touched = [t for t in blame["tensors"] if t["name"] in left]
    assert len(touched) == 2
    for t in touched:
        row = next(a for a in t["authors"] if a["author"] == a0)
        assert row["l2"] == pytest.approx(float(np.linalg.norm(left[t["name"]])), rel=1e-9, abs=1e-12)
        assert row["updates"] == 2  # their own two; the revert is not theirs
