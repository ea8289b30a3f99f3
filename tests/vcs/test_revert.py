"""`potluck revert`: the signed proposal, who may revert, which updates can be, and the arithmetic that
takes one update's merged contribution back out (tests/vcs/conftest.py builds the histories)."""

from __future__ import annotations

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
from potluck.updates.codec import decode_update
from potluck.vcs import revert
from potluck.vcs.numbers import merged_step
from potluck.vcs.repo import HistoryRepo
from tests.cli.test_cli import assert_config_error, in_process
from tests.vcs.conftest import Built, build_history, make_update


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
    (tmp_path / "s").mkdir()
    strict = build_history(tmp_path / "s", rounds=1)
    load_or_create(strict.data_dir)
    proc = in_process(
        capsys, "revert", "--data-dir", str(strict.data_dir), strict.updates[0][0], "-o", str(out)
    )
    assert_config_error(proc, "revert_not_allowed")
