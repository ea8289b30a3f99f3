"""history_clip: centered clipping around the agreed history's momentum; bit for bit deterministic."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bench import attacks
from potluck.merge import StrategyError, get_strategy, supports_columns
from potluck.merge.batch import make_batch
from potluck.merge.context import RoundContext, entries_digest
from potluck.merge.history import HistoryClip, bucket_order, momentum_center, screen
from tests.merge.test_norm_filter import orthogonal_sparse


def ctx(n: int, previous=(), digest: bytes = b"d" * 32) -> RoundContext:
    return RoundContext(authors=tuple(f"{i:02x}" for i in range(n)), previous=tuple(previous), digest=digest)


def norm(v: np.ndarray) -> float:
    return math.sqrt(float(np.sum(v * v)))


def test_registered_as_a_history_aware_vector_strategy_with_defaults():
    s = get_strategy("history_clip")
    assert isinstance(s, HistoryClip) and s.kind == "vector" and not supports_columns(s)
    assert s.history_rounds >= 1
    assert s.args == {
        "beta": 0.5,
        "clip": 2.0,
        "reject": 4.0,
        "min_cos": -1.0,
        "dup_cos": 0.9,
        "min_agree": -0.08,
        "bucket": 1,
        "iterations": 1,
    }


@pytest.mark.parametrize(
    "args",
    [
        {"beta": 1.0},
        {"beta": -0.1},
        {"clip": 0},
        {"reject": 0.5},
        {"min_cos": 1.5},
        {"dup_cos": -0.1},
        {"min_agree": "x"},
        {"bucket": 0},
        {"iterations": 0},
        {"tau": 1},
    ],
)
def test_bad_args(args):
    with pytest.raises(StrategyError):
        get_strategy("history_clip", args)


def test_bad_context():
    s = get_strategy("history_clip")
    deltas = orthogonal_sparse(4)
    with pytest.raises(StrategyError, match="RoundContext"):
        s.merge(deltas, [1] * 4, round_seed=0, context={"previous": ()})  # type: ignore[arg-type]
    with pytest.raises(StrategyError, match="authors"):
        s.merge(deltas, [1] * 4, round_seed=0, context=ctx(3))
    with pytest.raises(StrategyError, match="shape"):
        s.merge(deltas, [1] * 4, round_seed=0, context=ctx(4, [{"w": np.zeros(7)}]))
    with pytest.raises(StrategyError, match="finite"):
        s.merge(deltas, [1] * 4, round_seed=0, context=ctx(4, [{"w": np.full(2000, np.nan)}]))


def test_without_history_it_is_robust_and_equal_with_none_or_empty_context():
    honest = orthogonal_sparse(6)
    attack = [{"w": -1000.0 * honest[0]["w"]}, {"w": 1000.0 * honest[1]["w"]}]
    s = get_strategy("history_clip")
    a = s.merge(honest + attack, [1] * 8, round_seed=3)["w"]
    b = s.merge(honest + attack, [1] * 8, round_seed=3, context=ctx(8))["w"]
    assert a.tobytes() == b.tobytes()
    mean = np.mean([d["w"] for d in honest], axis=0)
    assert norm(a - mean) < 0.5 * norm(mean)  # the x1000 rows are dropped, the rest averaged


def weighted_mean(deltas, weights) -> np.ndarray:
    return get_strategy("weighted_mean").merge(deltas, weights, round_seed=0)["w"]


def test_honest_round_is_weighted_mean_bit_for_bit_when_nothing_is_clipped():
    honest = orthogonal_sparse(6)
    mean = np.mean([d["w"] for d in honest], axis=0)
    previous = [{"w": 0.5 * mean}]
    got = get_strategy("history_clip").merge(honest, [5] * 6, round_seed=0, context=ctx(6, previous))["w"]
    assert got.tobytes() == weighted_mean(honest, [5] * 6).tobytes()
    np.testing.assert_allclose(got, mean, rtol=0, atol=1e-7)  # weighted_mean's fixed point: 2**-24


def test_weights_count_up_to_their_median():
    honest = orthogonal_sparse(6)
    previous = [{"w": np.zeros(2000)}]
    weights = [143, 144, 144, 143, 144, 144]  # honest sample counts: the weighted mean, nothing clipped
    got = get_strategy("history_clip").merge(honest, weights, round_seed=0, context=ctx(6, previous))["w"]
    assert got.tobytes() == weighted_mean(honest, weights).tobytes()
    claimed = [144, 144, 144, 144, 144, 10**6]  # an over-claimed count weighs as the median, 144
    s = get_strategy("history_clip")
    got = s.merge(honest, claimed, round_seed=0, context=ctx(6, previous))["w"]
    assert got.tobytes() == weighted_mean(honest, [144] * 6).tobytes()
    clipped = get_strategy("history_clip", {"clip": 0.5})  # the clipped path weighs alike
    got = clipped.merge(honest, claimed, round_seed=0, context=ctx(6, previous))["w"]
    want = clipped.merge(honest, [144] * 6, round_seed=0, context=ctx(6, previous))["w"]
    assert min(clipped.last_factors) < 1.0 and got.tobytes() == want.tobytes()
    assert s.last_factors[:5] == (1.0,) * 5 and s.last_factors[5] == 144 / 10**6


def test_bitwise_invariant_under_input_order():
    deltas = orthogonal_sparse(6, seed=4)
    previous = [{"w": np.mean([d["w"] for d in deltas], axis=0)}, {"w": deltas[0]["w"]}]
    s = get_strategy("history_clip", {"bucket": 2, "iterations": 3, "clip": 1})
    ref = s.merge(deltas, [1] * 6, round_seed=1, context=ctx(6, previous))["w"].tobytes()
    for perm in itertools.islice(itertools.permutations(range(6)), 1, 40, 7):
        got = s.merge([deltas[i] for i in perm], [1] * 6, round_seed=1, context=ctx(6, previous))["w"]
        assert got.tobytes() == ref


def test_bucketing_is_reproducible_from_the_digest():
    assert bucket_order(8, b"a") == bucket_order(8, b"a")
    assert sorted(bucket_order(8, b"a")) == list(range(8))
    assert len({tuple(bucket_order(8, bytes([k]))) for k in range(20)}) > 1
    deltas = orthogonal_sparse(6, seed=2)
    previous = [{"w": 0.1 * deltas[0]["w"]}]
    s = get_strategy("history_clip", {"bucket": 2, "clip": 0.5})
    one = entries_digest(["aa", "bb"])
    a = s.merge(deltas, [1] * 6, round_seed=0, context=ctx(6, previous, one))["w"]
    b = s.merge(deltas, [1] * 6, round_seed=99, context=ctx(6, previous, one))["w"]
    c = s.merge(deltas, [1] * 6, round_seed=0, context=ctx(6, previous, entries_digest(["cc"])))["w"]
    assert a.tobytes() == b.tobytes()  # the digest, not the round seed, seeds the buckets
    assert a.tobytes() != c.tobytes()  # another round's digest forms other buckets (clip=0.5 clips them)


def test_clipping_bounds_an_outlier_and_the_gate_drops_a_reversal():
    honest = orthogonal_sparse(6, seed=1)
    mean = np.mean([d["w"] for d in honest], axis=0)
    previous = [{"w": mean}]
    med = sorted(norm(d["w"] - mean) for d in honest)[2]
    s = get_strategy("history_clip", {"min_cos": -1})  # no gate: only clipping bounds it
    for scale in (3.0, 30.0):
        outlier = {"w": np.zeros(2000)}
        outlier["w"][1999] = scale * med  # a direction no honest delta has, within reject x med
        got = s.merge([*honest, outlier], [1] * 7, round_seed=0, context=ctx(7, previous))["w"]
        assert abs(got[1999]) <= 2.0 * 3.0 * med / 7 + 1e-12  # at most tau / k (tau = 2 x a median)
    reversal = {"w": -3.0 * mean}  # IPM: against the honest mean and the history
    for gate in ({}, {"min_cos": 0}):  # the disagreement screen, or the history gate, drops it
        args = {"min_agree": -1, **gate} if gate else {}
        got = get_strategy("history_clip", args).merge(
            [*honest, reversal], [1] * 7, round_seed=0, context=ctx(7, previous)
        )["w"]
        assert got.tobytes() == weighted_mean(honest, [1] * 6).tobytes()  # the reversal is dropped


def test_screen_collapses_copies_and_drops_the_most_disagreeing_rows():
    honest = np.stack([d["w"] for d in orthogonal_sparse(6, seed=3)])
    copies = np.stack([honest[0], honest[0] * 1.5])  # a mimic and a scaled copy: cosine 1
    out, groups = screen(np.concatenate([honest, copies]), 0.9, -1.0)
    assert out.shape[0] == 6 and groups[0] == [0, 6, 7]  # honest[0] and its copies: one row, their mean
    np.testing.assert_allclose(out[0], (honest[0] + honest[0] + 1.5 * honest[0]) / 3)
    mean = honest.mean(axis=0)
    pushers = np.stack([-mean + 0.05 * honest[1], -mean + 0.05 * honest[2]])  # two differing IPMs
    out, groups = screen(np.concatenate([honest, pushers]), 0.9, -0.08)
    assert np.array_equal(out, honest) and groups == [[i] for i in range(6)]
    assert screen(np.concatenate([honest, pushers]), 1.0, -1.0)[0].shape[0] == 8  # screen off
    many = np.stack([-mean + 0.01 * honest[k] for k in range(6)])  # a majority of pushers
    assert screen(np.concatenate([honest[:2], many]), 1.0, -0.08)[0].shape[0] >= 5  # at most (k-1)//2


def test_momentum_center_weights_newest_first():
    b = make_batch([{"w": np.zeros(3)}, {"w": np.ones(3)}], [1, 1])
    c = momentum_center(b, [{"w": np.full(3, 3.0)}, {"w": np.zeros(3)}], 0.5)
    np.testing.assert_allclose(c, np.full(3, 2.0))  # (1 * 3 + 0.5 * 0) / 1.5


def test_an_ipm_under_the_norm_cut_reverses_norm_filter_but_not_history_clip():
    honest = [d["w"] for d in orthogonal_sparse(6, seed=5)]
    mean = np.mean(honest, axis=0)
    covers = [np.zeros_like(mean), np.zeros_like(mean)]
    # bench/attacks.py's adaptive IPM, all push (c = 1), at 2 median norms: under norm_filter's cut
    push = next(c for c in attacks.candidates(-mean, honest, None, covers, False) if norm(c[0]) > 1.5)
    deltas = [{"w": x} for x in honest + push]
    nf = get_strategy("norm_filter").merge(deltas, [1] * 8, round_seed=0)["w"]
    hc = get_strategy("history_clip").merge(deltas, [1] * 8, round_seed=0, context=ctx(8, [{"w": mean}]))["w"]
    assert float(np.sum(nf * mean)) < 0  # reversed
    assert float(np.sum(hc * mean)) > 0.9 * float(np.sum(mean * mean))  # the copies count once, dropped


def test_last_factors_say_what_each_delta_weighed_in_the_order_passed():
    honest = orthogonal_sparse(5, seed=6)
    copy = {"w": honest[0]["w"].copy()}  # a mimic
    flip = {"w": -1000.0 * honest[1]["w"]}  # dropped by the norm cut
    s = get_strategy("history_clip")
    history = [{"w": np.zeros(2000)}]
    s.merge([flip, *honest, copy], [1] * 7, round_seed=0, context=ctx(7, history))
    assert s.last_factors == (0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5)
    s.merge([flip, *honest, copy], [1] * 7, round_seed=0, context=ctx(7))  # round 0: copies count once
    assert s.last_factors == (0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5)
    near = {"w": honest[0]["w"] + 0.3 * honest[1]["w"]}  # cosine ~0.95: a near-copy, or honest in round 0
    s.merge([*honest, near], [1] * 6, round_seed=0, context=ctx(6, history))
    assert s.last_factors == (0.5, 1.0, 1.0, 1.0, 1.0, 0.5)
    s.merge([*honest, near], [1] * 6, round_seed=0, context=ctx(6))
    assert s.last_factors == (1.0,) * 6
    s.merge(honest, [1] * 5, round_seed=0, context=ctx(5, [{"w": np.zeros(2000)}]))
    assert s.last_factors == (1.0,) * 5
