"""`potluck show`, `diff` and `blame` on a built history: the numbers against ones computed here from the
stored versions and signed updates, and bad input as one line with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from potluck.store.versions import load_state
from potluck.updates.codec import decode_update
from tests.cli.test_cli import assert_config_error, in_process
from tests.vcs.conftest import Built, build_history


def _json(capsys, *args: str) -> dict:
    proc = in_process(capsys, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _state(b: Built, i: int) -> dict[str, np.ndarray]:
    return load_state(b.data_dir / "versions" / f"{b.versions[i]}.safetensors")


def test_show_names_round_parent_updates_weights_and_quorum(built: Built, capsys) -> None:
    d = _json(capsys, "show", "r1", "--data-dir", str(built.data_dir))
    assert (d["round"], d["parent"], d["version"]) == (1, built.versions[1], built.versions[2])
    assert sorted(u["update_id"] for u in d["updates"]) == built.updates[1]
    assert {u["author"] for u in d["updates"]} == {a.node_id for a in built.authors}
    assert sum(u["weight"] for u in d["updates"]) == d["total_weight"]
    assert sum(u["share"] for u in d["updates"]) == pytest.approx(1.0)
    assert d["quorum"] == 2 and d["quorum_met"] and all(s["valid"] for s in d["signatures"])
    assert d["strategy"] == "weighted_mean"
    text = in_process(capsys, "show", built.versions[2][:8], "--data-dir", str(built.data_dir)).stdout
    assert "round     1" in text and "quorum 2 (met)" in text and built.updates[1][0][:16] in text
    genesis = _json(capsys, "show", "genesis", "--data-dir", str(built.data_dir))
    assert genesis["genesis"] and genesis["version"] == built.versions[0]


@pytest.mark.parametrize("name", ["zzzzzz", "abc", "r9", "0000000000"])
def test_an_unknown_version_is_one_line_exit_2(built: Built, capsys, name: str) -> None:
    assert_config_error(in_process(capsys, "show", name, "--data-dir", str(built.data_dir)), name)
    assert_config_error(in_process(capsys, "diff", "r0", name, "--data-dir", str(built.data_dir)), name)


def test_diff_agrees_with_numpy(built: Built, capsys) -> None:
    d = _json(capsys, "diff", "r0", "r2", "--data-dir", str(built.data_dir))
    a, b, prev = _state(built, 1), _state(built, 3), _state(built, 0)
    rows = {t["name"]: t for t in d["tensors"]}
    assert set(rows) == set(a)
    for name in a:
        change = b[name].astype(np.float64) - a[name].astype(np.float64)
        before = a[name].astype(np.float64) - prev[name].astype(np.float64)
        assert rows[name]["changed"] == int(np.count_nonzero(a[name] != b[name]))
        assert rows[name]["l2"] == pytest.approx(np.linalg.norm(change))
        assert rows[name]["relative"] == pytest.approx(np.linalg.norm(change) / np.linalg.norm(a[name]))
        if np.linalg.norm(change) and np.linalg.norm(before):
            cos = change.ravel() @ before.ravel() / np.linalg.norm(change) / np.linalg.norm(before)
            assert rows[name]["cosine_prev"] == pytest.approx(cos)
    assert rows["l1.bias"]["changed"] == 0  # no update touches it
    only = _json(capsys, "diff", "r0", "r2", "--tensor", "l2.*", "--data-dir", str(built.data_dir))
    assert [t["name"] for t in only["tensors"]] == ["l2.bias", "l2.weight"]
    assert_config_error(
        in_process(capsys, "diff", "r0", "r2", "--tensor", "nope*", "--data-dir", str(built.data_dir)), "nope"
    )
    genesis = _json(capsys, "diff", "genesis", "r0", "--data-dir", str(built.data_dir))
    assert all(t["cosine_prev"] is None for t in genesis["tensors"])


def test_diff_group_selects_the_manifests_parameter_group_and_sums_it(tmp_path, capsys) -> None:
    """A tensor is in its first matching rule's group; a group's l2 is over all its tensors' entries."""
    b = build_history(tmp_path, rounds=2, groups=["l2.*:max_density=0.5", "*.bias:max_density=0.5"])
    d = _json(capsys, "diff", "r0", "r1", "--data-dir", str(b.data_dir))
    assert [g["group"] for g in d["groups"]] == ["l2.*", "*.bias", "other"]
    a, c = _state(b, 1), _state(b, 2)
    members = {"l2.*": ["l2.bias", "l2.weight"], "*.bias": ["l1.bias"], "other": ["l1.weight"]}
    for g in d["groups"]:
        names = members[g["group"]]
        change = np.concatenate([(c[n].astype(np.float64) - a[n].astype(np.float64)).ravel() for n in names])
        before = np.concatenate([a[n].astype(np.float64).ravel() for n in names])
        assert g["tensors"] == len(names)
        assert g["changed"] == sum(int(np.count_nonzero(a[n] != c[n])) for n in names)
        assert g["l2"] == pytest.approx(np.linalg.norm(change))
        assert g["relative"] == pytest.approx(np.linalg.norm(change) / np.linalg.norm(before))
    only = _json(capsys, "diff", "r0", "r1", "--group", "*.bias", "--data-dir", str(b.data_dir))
    assert [t["name"] for t in only["tensors"]] == ["l1.bias"]  # l2.bias is in the first group
    assert [g["group"] for g in only["groups"]] == ["*.bias"]
    text = in_process(capsys, "diff", "r0", "r1", "--group", "other", "--data-dir", str(b.data_dir))
    assert "l1.weight" in text.stdout and "GROUP" in text.stdout and "l2.bias" not in text.stdout
    proc = in_process(capsys, "diff", "r0", "r1", "--group", "nope", "--data-dir", str(b.data_dir))
    assert_config_error(proc, "nope", "l2.*, *.bias, other")


def test_blame_agrees_with_the_updates(built: Built, capsys) -> None:
    """Each author's movement: outer_lr * w * delta / W summed over its rounds, from the decoded updates."""
    d = _json(capsys, "blame", "--from", "r0", "--data-dir", str(built.data_dir))
    assert d["rounds"] == [1, 2] and d["missing"] == []
    lr, shapes = built.manifest.outer_lr, {"l1.weight": 512, "l2.bias": 4}
    expected = {a.node_id: {n: np.zeros(k) for n, k in shapes.items()} for a in built.authors}
    for r in (1, 2):
        held = built.data_dir / "updates"
        ups = [decode_update((held / f"{u}.update").read_bytes()) for u in built.updates[r]]
        total = sum(built.manifest.update_weight(u.update.sample_count) for u in ups)
        for u in ups:
            w = built.manifest.update_weight(u.update.sample_count)
            for t in u.update.tensors:
                moved = lr * w * t.values.astype(np.float64) / total
                expected[u.update.author.hex()][t.name][t.indices] += moved
    rows = {t["name"]: t for t in d["tensors"]}
    assert rows["l1.bias"]["authors"] == []
    for name in shapes:
        got = {a["author"]: a for a in rows[name]["authors"]}
        totals = sum(expected[a][name] for a in expected)
        for author in expected:
            moved = expected[author][name]
            assert got[author]["l2"] == pytest.approx(np.linalg.norm(moved), rel=1e-5)
            assert got[author]["share"] == pytest.approx(moved @ totals / (totals @ totals), rel=1e-4)
            assert got[author]["updates"] == 2
        assert sum(a["share"] for a in got.values()) == pytest.approx(1.0)
    # the movement adds up to the versions' difference (up to the float32 casts)
    change = _state(built, 3)["l1.weight"].astype(np.float64) - _state(built, 1)["l1.weight"]
    assert rows["l1.weight"]["l2"] == pytest.approx(np.linalg.norm(change), rel=1e-4)
    text = in_process(capsys, "blame", "--tensor", "l2.bias", "--data-dir", str(built.data_dir)).stdout
    assert "rounds 0..2 (3 committed)" in text and built.authors[0].node_id[:16] in text


def test_blame_refuses_a_bad_range(built: Built, capsys) -> None:
    dd = str(built.data_dir)
    proc = in_process(capsys, "blame", "--from", "r2", "--to", "r1", "--data-dir", dd)
    assert_config_error(proc, "--to r1")


def _deltas(b: Built, r: int) -> dict[str, dict[str, np.ndarray]]:
    """author -> tensor -> the float64 dense delta of its update merged in round ``r``."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for uid in b.updates[r]:
        u = decode_update((b.data_dir / "updates" / f"{uid}.update").read_bytes()).update
        for t in u.tensors:
            dense = out.setdefault(u.author.hex(), {}).setdefault(t.name, np.zeros(int(np.prod(t.shape))))
            dense[t.indices] = t.values.astype(np.float64)
    return out


def test_a_median_run_verifies_and_blame_attributes_the_middle_values(tmp_path, capsys) -> None:
    """Two deltas: where both touch a coordinate its median is their mean, where one does, the sparse rule
    gives its value times m / n = 1/2; so each author moved lr * delta / 2 each round."""
    b = build_history(tmp_path, rounds=2, strategy="coordinate_median")
    dd = str(b.data_dir)
    assert in_process(capsys, "verify", "--data-dir", dd).returncode == 0
    d = _json(capsys, "blame", "--data-dir", dd)
    assert d["rounds"] == [0, 1] and d["attribution"] == ["exact"]
    lr = b.manifest.outer_lr
    for t in d["tensors"]:
        if not t["authors"]:
            continue
        expected = {
            a.node_id: lr * sum(_deltas(b, r)[a.node_id][t["name"]] for r in (0, 1)) / 2 for a in b.authors
        }
        whole = sum(expected.values())
        got = {a["author"]: a for a in t["authors"]}
        for author, moved in expected.items():
            assert got[author]["l2"] == pytest.approx(np.linalg.norm(moved), rel=1e-9)
            assert got[author]["share"] == pytest.approx(moved @ whole / (whole @ whole), rel=1e-9)
        assert sum(a["share"] for a in t["authors"]) == pytest.approx(1.0) and t["unattributed"] is None
        change = _state(b, 2)[t["name"]].astype(np.float64) - _state(b, 0)[t["name"]]  # up to the casts
        np.testing.assert_allclose(whole, change.reshape(-1), rtol=0, atol=1e-6)
    text = in_process(capsys, "blame", "--data-dir", dd).stdout
    assert "attributed by: exact" in text


def test_a_run_with_per_group_strategies_verifies_and_blame_attributes_each_group(tmp_path, capsys) -> None:
    """l2.* merged by coordinate_median (two deltas: lr * delta / 2 each), the rest by the weighted mean,
    as the engine merges them (merge/grouped.py); verify recomputes the same per-group merge."""
    b = build_history(tmp_path, rounds=2, groups=["l2.*:strategy=coordinate_median"])
    dd = str(b.data_dir)
    assert _json(capsys, "verify", "--data-dir", dd)["ok"]
    d = _json(capsys, "blame", "--tensor", "l2.*", "--data-dir", dd)
    assert d["attribution"] == ["grouped: coordinate_median exact, weighted_mean exact"]
    [t] = [t for t in d["tensors"] if t["authors"]]
    expected = {
        a.node_id: b.manifest.outer_lr * sum(_deltas(b, r)[a.node_id][t["name"]] for r in (0, 1)) / 2
        for a in b.authors
    }
    assert {a["author"]: a["l2"] for a in t["authors"]} == pytest.approx(
        {a: np.linalg.norm(m) for a, m in expected.items()}, rel=1e-9
    )


def test_a_strategy_with_no_exact_rule_is_attributed_by_projection(tmp_path, capsys) -> None:
    """A third-party strategy (the first delta in canonical order, tests/merge/custom_strategy.py): each
    update's share of the merged delta D is its projection's, <x_u, D> / sum_v <x_v, D>, per tensor."""
    b = build_history(tmp_path, rounds=1, strategy="tests.merge.custom_strategy:FirstScaled")
    d = _json(capsys, "blame", "--data-dir", str(b.data_dir))
    assert d["attribution"] == ["projection"]
    change = {k: v.astype(np.float64) - _state(b, 0)[k] for k, v in _state(b, 1).items()}
    deltas = _deltas(b, 0)
    for t in d["tensors"]:
        merged = change[t["name"]].reshape(-1)  # lr * D, up to the cast
        if not merged.any():
            continue
        p = {a: x[t["name"]] @ merged for a, x in deltas.items()}
        got = {a["author"]: a["share"] for a in t["authors"]}
        assert got == pytest.approx({a: v / sum(p.values()) for a, v in p.items() if v}, rel=1e-4)


def test_a_history_aware_run_is_blamed_by_projection_on_its_stored_steps(tmp_path, capsys) -> None:
    """history_clip merges with earlier rounds' steps, so a round's merge is not a function of its own
    updates: blame projects each update on the round's step as the versions show it, (V_r+1 - V_r) / lr,
    and what no update projects on (the history carried in) is unattributed."""
    b = build_history(tmp_path, rounds=3, strategy="history_clip", authors=6)
    dd, lr = str(b.data_dir), b.manifest.outer_lr
    assert _json(capsys, "verify", "--data-dir", dd)["ok"]
    d = _json(capsys, "blame", "--data-dir", dd)
    assert d["rounds"] == [0, 1, 2] and d["attribution"] == ["projection"]
    states = [{k: v.astype(np.float64) for k, v in _state(b, i).items()} for i in range(4)]
    checked = 0
    for t in d["tensors"]:
        name = t["name"]
        moved: dict[str, np.ndarray] = {}
        for r in range(3):
            step = (states[r + 1][name] - states[r][name]).reshape(-1) / lr
            p = {a: x[name] @ step for a, x in _deltas(b, r).items() if name in x}
            if sum(p.values()) == 0:
                continue
            for a, v in p.items():
                moved[a] = moved.get(a, 0) + lr * step * (v / sum(p.values()))
        got = {a["author"]: a["l2"] for a in t["authors"]}
        expected = {a: np.linalg.norm(m) for a, m in moved.items() if np.linalg.norm(m) > 0}
        assert got == pytest.approx(expected, rel=1e-6), name
        checked += bool(expected)
    assert checked > 0


@pytest.mark.parametrize("command", ["show", "diff", "blame", "verify", "gc"])
def test_help(capsys, command: str) -> None:
    proc = in_process(capsys, command, "--help")
    assert proc.returncode == 0 and "usage: potluck" in proc.stdout


def test_no_history_is_one_line(capsys, tmp_path) -> None:
    assert_config_error(in_process(capsys, "verify", "--data-dir", str(tmp_path)), "no history")


def test_show_says_which_updates_the_strategy_damped(built, capsys) -> None:
    """The factors the merging node kept (vcs/damping.py) show beside the updates, in JSON and text."""
    from potluck.vcs import damping

    victim = built.updates[1][0]
    damping.write(built.data_dir, built.versions[2], {victim: 0.125})
    proc = in_process(capsys, "show", "r1", "--data-dir", str(built.data_dir), "--json")
    rows = {u["update_id"]: u for u in json.loads(proc.stdout)["updates"]}
    assert rows[victim]["damped"] == 0.125 and all("damped" not in u for k, u in rows.items() if k != victim)
    text = in_process(capsys, "show", "r1", "--data-dir", str(built.data_dir)).stdout
    assert f"{victim[:16]} damped x0.125 by weighted_mean" in text
    assert "damped" not in in_process(capsys, "show", "r0", "--data-dir", str(built.data_dir)).stdout
    (built.data_dir / "damping" / f"{built.versions[2]}.json").write_text("[1, 2]")  # not a mapping: none
    assert damping.read(built.data_dir, built.versions[2]) == {}
