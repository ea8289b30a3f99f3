"""potluck.merge.probe: the probe set's name, deterministic leave-one-out scores, and the keep rule."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from potluck.merge.probe import (
    LOSS_CAP,
    ProbeError,
    ProbeRule,
    ProbeSet,
    mlp_class_losses,
    probe_args,
    probe_cut,
    probe_filter,
    probe_keep,
    probe_scores,
    quantize,
)

LAYERS = ("fc1", "fc2")


def _state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": rng.normal(0, 0.5, (8, 4)).astype(np.float32),
        "fc1.bias": rng.normal(0, 0.1, 8).astype(np.float32),
        "fc2.weight": rng.normal(0, 0.5, (3, 8)).astype(np.float32),
        "fc2.bias": np.zeros(3, np.float32),
    }


def _probe(seed: int = 1, n: int = 30) -> ProbeSet:
    rng = np.random.default_rng(seed)
    return ProbeSet(rng.random((n, 4)).astype(np.float32), (np.arange(n) % 3).astype(np.int64), 3)


def _deltas(k: int, seed: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = _state()
    return [{n: rng.normal(0, 0.05, v.shape).astype(np.float32) for n, v in base.items()} for _ in range(k)]


def _bits(xs: list[float]) -> bytes:
    return struct.pack(f"<{len(xs)}d", *xs)


def test_named_probe_set_is_refused_unless_its_bytes_hash_to_the_name() -> None:
    probe = _probe()
    same = ProbeSet.named(probe.x.copy(), probe.y.copy(), 3, probe.digest())
    assert same.digest() == probe.digest() and len(probe.digest()) == 64
    x = probe.x.copy()
    x[0, 0] = np.nextafter(x[0, 0], np.float32(2))  # one ulp of one pixel: another set
    with pytest.raises(ProbeError, match=r"hashes to .* the run names"):
        ProbeSet.named(x, probe.y, 3, probe.digest())
    with pytest.raises(ProbeError, match="the run names"):
        ProbeSet.named(probe.x, probe.y, 4, probe.digest())  # the class count is part of the name


def test_malformed_probe_sets_are_refused() -> None:
    with pytest.raises(ProbeError, match="float32"):
        ProbeSet(np.zeros((2, 4)), np.zeros(2, np.int64), 3)
    with pytest.raises(ProbeError, match=r"labels in \[0, 3\)"):
        ProbeSet(np.zeros((2, 4), np.float32), np.array([0, 3]), 3)
    with pytest.raises(ProbeError, match="not finite"):
        ProbeSet(np.full((2, 4), np.nan, np.float32), np.array([0, 1]), 3)


def test_class_losses_match_a_reference_forward() -> None:
    state, probe = _state(), _probe()
    s = {k: v.astype(np.float64) for k, v in state.items()}
    h = np.maximum(probe.x @ s["fc1.weight"].T + s["fc1.bias"], 0) @ s["fc2.weight"].T + s["fc2.bias"]
    nll = np.log(np.exp(h).sum(1)) - h[np.arange(len(probe.y)), probe.y]
    want = [nll[probe.y == c].mean() for c in range(3)]
    assert mlp_class_losses(state, LAYERS, probe) == pytest.approx(want, rel=1e-12)


def test_scores_are_the_same_bytes_under_permutation_and_repetition() -> None:
    base, probe, deltas = _state(), _probe(), _deltas(6)
    first = probe_scores(base, deltas, LAYERS, probe)
    assert _bits(probe_scores(base, deltas, LAYERS, probe)) == _bits(first)
    rng = np.random.default_rng(3)
    for _ in range(4):
        perm = rng.permutation(6).tolist()
        got = probe_scores(base, [deltas[i] for i in perm], LAYERS, probe)
        assert _bits(got) == _bits([first[i] for i in perm])
    assert len(set(first)) == 6  # the scores tell the deltas apart: the test can fail


def test_a_harmful_delta_scores_lowest_and_is_filtered_out() -> None:
    base, probe, deltas = _state(), _probe(), _deltas(5)
    bad = {k: np.zeros_like(v) for k, v in base.items()}
    bad["fc2.bias"] = np.array([0.0, 0.0, 8.0], np.float32)  # every probe sample pushed to class 2
    deltas.insert(2, bad)
    scores = probe_scores(base, deltas, LAYERS, probe)
    assert min(range(6), key=scores.__getitem__) == 2 and scores[2] < 0
    assert 2 not in probe_filter(base, deltas, LAYERS, probe)


def test_scores_refuse_a_delta_on_a_tensor_the_model_lacks() -> None:
    deltas = _deltas(2)
    deltas[1]["fc3.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ProbeError, match=r"fc3\.weight"):
        probe_scores(_state(), deltas, LAYERS, _probe())
    assert probe_scores(_state(), deltas[:1], LAYERS, _probe()) == [0.0]  # a lone delta has no score


def test_keep_drops_the_lowest_below_the_cut_within_the_budget() -> None:
    fixed = [1.0, 0.9, 1.1, -2.0, 0.8]
    assert probe_keep(5, lambda kept: [fixed[i] for i in kept]) == [0, 1, 2, 4]
    # cut -0.5 x median |score|: -0.4 is kept, -0.6 is not
    assert probe_keep(5, lambda kept: [[1.0, -0.4, 1.0, 1.0, -3.0][i] for i in kept]) == [0, 1, 2, 3]
    many = [-5.0, -4.0, -3.0, -2.0, 1.0, 1.0, 1.0]
    assert probe_keep(7, lambda kept: [many[i] for i in kept]) == [3, 4, 5, 6]  # at most (7 - 1) // 2
    assert probe_keep(5, lambda kept: [1.0] * len(kept)) == [0, 1, 2, 3, 4]


def test_keep_rescores_after_each_drop() -> None:
    def scores_of(kept: list[int]) -> list[float]:
        # 1 looks bad only while 3 is in; 4 looks fine only while 3 is in
        out = {0: 1.0, 1: -2.0 if 3 in kept else 1.0, 2: 1.0, 3: -5.0, 4: 1.0 if 3 in kept else -2.0}
        return [out[i] for i in kept]

    assert probe_keep(5, scores_of) == [0, 1, 2]
    with pytest.raises(ProbeError, match="NaN"):
        probe_keep(3, lambda kept: [float("nan")] * len(kept))


def test_probe_args_fill_defaults_and_refuse_bad_tables_in_one_line() -> None:
    name = "ab" * 32
    assert probe_args({}) == {}
    assert probe_args({"set": name}) == {"floor": 0.0, "frac": 0.5, "per_class": 10, "set": name}
    table = {"set": name, "frac": 1, "floor": 0, "per_class": 3}
    assert probe_args(table) == {"floor": 0.0, "frac": 1.0, "per_class": 3, "set": name}
    bad = [
        ({"frac": 0.5}, "needs set = HASH"),
        ({"set": name.upper()}, "64 lowercase hex"),
        ({"set": name, "frac": 0.0}, r"frac must be a number in \(0, 10\]"),
        ({"set": name, "frac": True}, "frac must be a number"),
        ({"set": name, "per_class": 0}, r"per_class must be an integer in \[1, 10000\]"),
        ({"set": name, "floor": float("nan")}, r"floor must be a number in \[0, 100\]"),
        ({"set": name, "cut": 1}, r"unknown key\(s\) \['cut'\]"),
    ]
    for table, message in bad:
        with pytest.raises(ProbeError, match=message) as e:
            probe_args(table)
        assert "\n" not in str(e.value)
    with pytest.raises(ProbeError, match="must be a table"):
        probe_args("set")  # type: ignore[arg-type]


def test_quantize_rounds_to_the_grid_exactly() -> None:
    assert quantize(0.0) == 0.0 and quantize(1.0) == 1.0
    assert quantize(1e-10) == 0.0  # below half a step of 2**-30
    assert quantize(3 * 2.0**-31) == 2 * 2.0**-30  # a tie rounds to even
    x = 0.123456789123
    assert quantize(x) * 2**30 == round(x * 2**30) and abs(quantize(x) - x) <= 2.0**-31


def test_an_update_that_blows_up_the_probe_loss_scores_lowest_and_no_score_is_nan() -> None:
    base, probe = _state(), _probe()
    deltas = _deltas(4)
    deltas[2] = {n: np.zeros(v.shape, np.float32) for n, v in base.items()}
    deltas[2]["fc2.bias"] = np.array([3e38, -3e38, 0], np.float32)  # class 1's loss ~1e38: capped
    scores = probe_scores(base, deltas, LAYERS, probe)
    assert not any(np.isnan(scores))
    assert min(range(4), key=scores.__getitem__) == 2 and scores[2] < -LOSS_CAP / 2
    dropped: list[tuple[int, float, float]] = []
    assert probe_filter(base, deltas, LAYERS, probe, dropped=dropped) == [0, 1, 3]
    assert [i for i, _, _ in dropped] == [2]


def test_rule_reports_each_drop_with_its_score_and_cut() -> None:
    base, probe = _state(), _probe()
    deltas = _deltas(5)
    deltas[4] = {k: np.zeros_like(v) for k, v in base.items()}
    deltas[4]["fc2.bias"] = np.array([0.0, 0.0, 8.0], np.float32)  # every probe sample pushed to class 2
    rule = ProbeRule(probe, LAYERS, 0.5)
    excluded = rule.excluded(base, deltas, 1.0)
    dropped: list[tuple[int, float, float]] = []
    kept = probe_filter(base, deltas, LAYERS, probe, 1.0, 0.5, dropped)
    assert excluded == {i: (s, c) for i, s, c in dropped} and 4 in excluded
    assert sorted(set(range(5)) - set(excluded)) == kept
    assert all(s < c and s == quantize(s) for s, c in excluded.values())


def test_the_floor_spares_scores_that_are_only_noise() -> None:
    assert probe_cut([0.004, -0.003, 0.002], 0.5) == -0.5 * 0.003
    assert probe_cut([0.004, -0.003, 0.002], 0.5, floor=0.01) == -0.01
    assert probe_cut([0.4, -0.3, 0.2], 0.5, floor=0.01) == -0.5 * 0.3  # the relative cut where lower
    noisy = [0.003, -0.002, 0.001, -0.004, 0.002]  # near-alike updates: every score near 0
    scores_of = lambda kept: [noisy[i] for i in kept]  # noqa: E731
    assert probe_keep(5, scores_of, 0.5) != [0, 1, 2, 3, 4]  # the relative cut drops some
    assert probe_keep(5, scores_of, 0.5, floor=0.01) == [0, 1, 2, 3, 4]


def test_trusted_updates_are_kept_and_judged_scores_are_relative_to_the_median() -> None:
    fixed = [1.0, 0.9, 1.1, -2.0, 0.8]
    scores_of = lambda kept: [fixed[i] for i in kept]  # noqa: E731
    judged: dict[int, float] = {}
    assert probe_keep(5, scores_of, judged=judged) == [0, 1, 2, 4]
    # the drop is judged against its scoring's median |score| (1.0), the kept against theirs (0.9)
    assert judged == {3: -2.0, 0: 1.0 / 0.9, 1: 1.0, 2: 1.1 / 0.9, 4: 0.8 / 0.9}
    assert probe_keep(5, scores_of, trusted={3}) == [0, 1, 2, 3, 4]
    # strict: a trusted update is judged by the cut of frac = strict (-1.5 x 1.0 here; -2.0 is below)
    assert probe_keep(5, scores_of, trusted={3}, strict=1.5) == [0, 1, 2, 4]
    assert probe_keep(5, scores_of, trusted={3}, strict=2.5) == [0, 1, 2, 3, 4]
    many = [-5.0, -4.0, -3.0, -2.0, 1.0, 1.0, 1.0]  # the budget still counts only real drops
    assert probe_keep(7, lambda kept: [many[i] for i in kept], trusted={0}) == [0, 4, 5, 6]
