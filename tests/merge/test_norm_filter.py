"""norm_filter: drops deltas far above the median norm, clips the rest, averages; bitwise deterministic."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bench import attacks
from potluck.merge import StrategyError, get_strategy, make_batch, supports_columns
from potluck.merge.batch import rowsum
from potluck.merge.norm_filter import NormFilter, norms_of
from tests.merge.test_columns import SHAPES, check, random_deltas


def vec(*values: float) -> dict[str, np.ndarray]:
    return {"w": np.array(values, dtype=np.float64)}


def merge(deltas, args=None, weights=None) -> np.ndarray:
    weights = [1] * len(deltas) if weights is None else weights
    return get_strategy("norm_filter", args or {}).merge(deltas, weights, round_seed=0)["w"]


def orthogonal_sparse(n: int, size: int = 2000, nnz: int = 40, seed: int = 0) -> list[dict]:
    """n sparse deltas on disjoint supports (like non-IID top-k updates), norms 1 to 1.8."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(size)
    out = []
    for i in range(n):
        v = np.zeros(size)
        idx = perm[i * nnz : (i + 1) * nnz]
        v[idx] = rng.standard_normal(nnz)
        v *= (1.0 + 0.8 * i / max(1, n - 1)) / math.sqrt(float(np.sum(v * v)))
        out.append({"w": v})
    return out


def test_registered_as_a_windowed_coordinate_strategy_with_defaults():
    s = get_strategy("norm_filter")
    assert isinstance(s, NormFilter) and s.kind == "coordinate" and supports_columns(s)
    assert s.args == {"reject": 4.0, "clip": 2.0}
    assert get_strategy("norm_filter", {"reject": "0", "clip": "1.5"}).args == {"reject": 0.0, "clip": 1.5}


@pytest.mark.parametrize(
    "args",
    [{"reject": 0.5}, {"reject": -1}, {"reject": "x"}, {"clip": -0.1}, {"clip": "nan"}, {"beta": 0.1}],
)
def test_bad_args(args):
    with pytest.raises(StrategyError):
        get_strategy("norm_filter", args)


def test_rule_on_hand_made_norms():
    # norms 1, 2, 3, 5, 13 (3-4-12 -> 13): median 3; reject > 12 drops 13; clip > 6: none
    deltas = [vec(1, 0), vec(0, 2), vec(3, 0), vec(3, 4), vec(12, 5)]
    s = get_strategy("norm_filter")
    assert sorted(s.scales(make_batch(deltas, [1] * 5))) == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert merge(deltas).tolist() == [7 / 4, 6 / 4]
    # clip = 1: 5 -> 3 (factor 3/5), 2 and 1 and 3 unchanged; 13 still dropped
    assert np.allclose(merge(deltas, {"clip": 1}), [(1 + 3 + 3 * 3 / 5) / 4, (2 + 4 * 3 / 5) / 4])
    # reject = 0: nothing dropped; clip = 0: nothing clipped (the plain unweighted mean)
    assert merge(deltas, {"reject": 0, "clip": 0}).tolist() == [19 / 5, 11 / 5]
    assert np.allclose(
        merge(deltas, {"reject": 0, "clip": 1}), [(1 + 3 + 9 / 5 + 36 / 13) / 5, (2 + 12 / 5 + 15 / 13) / 5]
    )
    # the weights are ignored (a peer must not buy influence by claiming samples)
    assert merge(deltas, weights=[1, 100, 1, 1, 1]).tobytes() == merge(deltas).tobytes()


def test_edge_cases():
    assert merge([vec(5, 5)]).tolist() == [5.0, 5.0]
    assert merge([vec(1, 0), vec(0, 100)]).tolist() == [1.0, 0.0]  # lower median of 2: the smaller one
    # a majority of empty deltas: the median norm is 0, any non-zero delta is dropped
    assert merge([vec(0, 0), vec(0, 0), vec(1, 1)]).tolist() == [0.0, 0.0]
    assert get_strategy("norm_filter").merge([], [], round_seed=0) == {}


def test_bitwise_deterministic_and_permutation_invariant():
    deltas = [*orthogonal_sparse(6), attacks.sign_flip(orthogonal_sparse(8)[7]), {"w": np.full(2000, 0.05)}]
    deltas[3] = {"w": deltas[3]["w"] * 3.1}  # clipped (median ~1.4)
    ref = merge(deltas).tobytes()
    assert merge(deltas).tobytes() == ref
    rng = np.random.default_rng(0)
    for _ in range(20):
        perm = rng.permutation(len(deltas))
        assert merge([deltas[i] for i in perm]).tobytes() == ref
    small = [vec(1, 0, 5), vec(0, 2, -1), vec(3, 0, 0), vec(-400, 0, 0)]
    outs = {merge([small[i] for i in p]).tobytes() for p in itertools.permutations(range(4))}
    assert len(outs) == 1


def test_agrees_with_an_independent_computation():
    deltas = orthogonal_sparse(7, seed=3)
    deltas[0] = {"w": deltas[0]["w"] * 4.5}  # clipped to 2 x median
    deltas[1] = {"w": deltas[1]["w"] * -40}  # dropped
    batch = make_batch(deltas, [1] * 7)
    norms = [math.sqrt(float(np.sum(r * r))) for r in batch.matrix]
    assert np.allclose(norms, norms_of(batch), rtol=1e-14, atol=0)
    med = sorted(norms)[3]
    rows = [r * min(1.0, 2 * med / d) for r, d in zip(batch.matrix, norms, strict=True) if d <= 4 * med]
    assert len(rows) == 6
    assert np.allclose(merge(deltas), np.mean(rows, 0), rtol=1e-13, atol=1e-15)


def test_removes_sign_flipped_x1000_deltas_bit_for_bit():
    honest = orthogonal_sparse(6, seed=1)
    flipped = [attacks.sign_flip(d) for d in orthogonal_sparse(8, seed=2)[6:]]
    alone = merge(honest)
    assert merge(honest + flipped[:1]).tobytes() == alone.tobytes()
    assert merge(honest + flipped).tobytes() == alone.tobytes()
    # and the same under IPM with eps 100 (-100 x the honest mean)
    ipm = [attacks.ipm(honest, 100.0)] * 2
    assert merge(honest + ipm).tobytes() == alone.tobytes()
    # the plain mean does not survive it
    assert np.linalg.norm(get_strategy("mean").merge(honest + flipped, [1] * 8, round_seed=0)["w"]) > 50


def test_bounded_influence_of_one_outlier():
    honest = orthogonal_sparse(7, seed=4)
    alone = merge(honest)
    max_honest = max(math.sqrt(float(np.sum(d["w"] ** 2))) for d in honest)
    rng = np.random.default_rng(5)
    worst = 0.0
    for scale in (0.0, 0.5, 1.0, 2.0, 3.0, 3.9, 4.1, 10.0, 1e3, 1e6, 1e12):
        for _ in range(5):
            u = rng.standard_normal(2000)
            o = {"w": u * (scale * max_honest / math.sqrt(float(np.sum(u * u))))}
            got = merge([*honest, o])
            worst = max(worst, float(np.linalg.norm(got - alone)))
            # every kept delta is at most 2 x the median norm, itself at most the largest honest norm
            assert np.linalg.norm(got) <= 2 * max_honest + 1e-12
    # adding or removing one delta moves the mean of kept deltas by at most 2 * (2 * med) / kept
    assert worst <= 2 * 2 * max_honest / 7
    assert worst > 0  # an outlier inside the honest range is averaged, not ignored


def test_window_is_bitwise_the_full_merge():
    for n, form in ((1, "dense"), (2, "sparse"), (7, "mixed"), (9, "mixed")):
        deltas = random_deltas(40 + n, n, form)
        weights = [1 + i for i in range(n)]
        if n >= 7:  # make one delta dropped and one clipped; their scale is decided on the whole delta
            deltas[1] = {"f": np.full(40, -100.0, np.float32), "a": np.ones((4, 5), np.float32)}
            deltas[2] = {"e": np.full(13, 4.0, np.float32)}
            s = get_strategy("norm_filter")
            scales = s.scales(make_batch(deltas, weights, shapes=SHAPES))
            assert 0.0 in scales and any(0 < x < 1 for x in scales)
        for args in ({}, {"clip": 1}, {"reject": 0, "clip": 0.5}):
            check("norm_filter", args, deltas, weights, seed=n, cols_seed=n)


def test_rowsum_order_matters_and_is_canonical():
    # the mean of the kept rows is summed row after row in canonical order: same bits as rowsum
    deltas = orthogonal_sparse(5, seed=7)
    batch = make_batch(deltas, [1] * 5)
    expected = rowsum(batch.matrix)
    expected /= 5
    assert merge(deltas).tobytes() == expected.tobytes()
