"""potluck.merge strategies on hand-made inputs with known answers, determinism, sparse-awareness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bench import attacks
from potluck.merge import StrategyError, get_strategy, make_batch, next_state
from potluck.merge.linear import keep_mask
from potluck.rounds.fixedpoint import Layout, local_average
from potluck.updates.codec import SparseTensor, Update

ALL = (
    "mean",
    "weighted_mean",
    "task_arithmetic",
    "ties",
    "dare",
    "trimmed_mean",
    "coordinate_median",
    "centered_clip",
    "multi_krum",
    "geometric_median",
    "norm_filter",
)


def vec(*values: float) -> dict[str, np.ndarray]:
    return {"w": np.array(values, dtype=np.float64)}


def merge(name: str, deltas, weights=None, args=None, seed: int = 0) -> np.ndarray:
    weights = [1] * len(deltas) if weights is None else weights
    return get_strategy(name, args or {}).merge(deltas, weights, round_seed=seed)["w"]


def random_deltas(n: int = 7, size: int = 300, density: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        v = rng.standard_normal(size).astype(np.float32)
        v[rng.random(size) > density] = 0
        out.append({"w": v, "b": rng.standard_normal((2, 3)).astype(np.float32)})
    return out


def test_median_of_three_and_dense_rule():
    assert merge("coordinate_median", [vec(1), vec(2), vec(100)], args={"sparse": "false"}).tolist() == [2.0]
    assert merge("coordinate_median", [vec(1), vec(2), vec(100)]).tolist() == [2.0]
    assert merge("coordinate_median", [vec(1), vec(2), vec(100), vec(4)], args={"sparse": 0}).tolist() == [
        3.0
    ]


def test_trimmed_mean():
    deltas = [vec(v) for v in (-50, 1, 2, 3, 4, 5, 6, 1000)]
    assert merge("trimmed_mean", deltas, args={"beta": 0.25, "sparse": "false"}).tolist() == [3.5]  # 2..5
    assert merge("trimmed_mean", deltas, args={"beta": 0.125}).tolist() == [3.5]  # 1..6
    assert merge("trimmed_mean", deltas, args={"beta": 0}).tolist() == [971 / 8]


def test_mean_weighted_mean_task_arithmetic():
    deltas = [vec(1.0, 0.5), vec(3.0, -0.5)]
    assert merge("mean", deltas, [1, 3]).tolist() == [2.0, 0.0]
    assert merge("weighted_mean", deltas, [1, 3]).tolist() == [2.5, -0.25]
    assert merge("task_arithmetic", deltas, args={"lambda": 0.5}).tolist() == [2.0, 0.0]


def test_weighted_mean_is_bitwise_local_average():
    rng = np.random.default_rng(3)
    base = {
        "a": rng.standard_normal((4, 5)).astype(np.float32),
        "b": rng.standard_normal(7).astype(np.float32),
    }
    updates, weights = [], []
    for _ in range(5):
        tensors = []
        for name in ("a", "b"):
            size = base[name].size
            idx = np.sort(rng.choice(size, 3, replace=False)).astype(np.int64)
            tensors.append(
                SparseTensor(name, base[name].shape, idx, rng.standard_normal(3).astype(np.float32))
            )
        updates.append(Update("run", 0, "0" * 64, bytes(32), 1, 10, tuple(tensors)))
        weights.append(int(rng.integers(1, 500)))
    expected, _ = local_average(base, Layout.from_state(base), list(zip(weights, updates, strict=True)), 0.7)
    got = next_state(base, get_strategy("weighted_mean").merge(updates, weights, round_seed=0), 0.7)
    for k in base:
        assert got[k].dtype == base[k].dtype
        assert got[k].tobytes() == expected[k].tobytes()


def test_ties_sign_election_and_disjoint_mean():
    deltas = [vec(3.0, 1.0, 0.0), vec(-1.0, -5.0, 2.0), vec(-1.0, 1.0, 0.0)]
    # k=100: no trimming. col0: sum +1 -> elect +, only 3 agrees; col1: sum -3 -> elect -, mean(-5)
    assert merge("ties", deltas, args={"k": 100}).tolist() == [3.0, -5.0, 2.0]
    # k=50 keeps ceil(nnz/2): delta0 keeps 3; delta1 keeps -5 and 2; delta2 keeps the first of a tie (-1)
    assert merge("ties", deltas, args={"k": 50, "lambda": 2}).tolist() == [6.0, -10.0, 4.0]


def test_dare_deterministic_and_unbiased():
    deltas = random_deltas(n=3, size=4000, density=1.0)
    a = get_strategy("dare", {"p": 0.7}).merge(deltas, [1, 2, 3], round_seed=42)
    b = get_strategy("dare", {"p": "0.7"}).merge(deltas[::-1], [3, 2, 1], round_seed=42)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    c = get_strategy("dare", {"p": 0.7}).merge(deltas, [1, 2, 3], round_seed=43)
    assert not np.array_equal(a["w"], c["w"])
    mask = keep_mask(42, 0, "w", 100_000, 0.7)
    assert abs(mask.mean() - 0.3) < 0.01
    # E[rescaled] = delta: the average over seeds converges to the weighted mean
    mean = get_strategy("weighted_mean").merge(deltas, [1, 2, 3], round_seed=0)["w"]
    avg = np.mean(
        [get_strategy("dare", {"p": 0.5}).merge(deltas, [1, 2, 3], round_seed=s)["w"] for s in range(200)], 0
    )
    assert np.abs(avg - mean).mean() < 0.1 * np.abs(mean).mean()
    no_drop = [get_strategy("dare", {"p": 0}).merge(deltas, [1, 1, 1], round_seed=s)["w"] for s in (1, 2)]
    assert np.array_equal(*no_drop)


def test_centered_clip_bounds_an_outlier():
    rng = np.random.default_rng(0)
    honest = [vec(*(1.0 + 0.1 * rng.standard_normal(4))) for _ in range(7)]
    honest_mean = np.mean([d["w"] for d in honest], 0)
    for scale in (1e3, 1e6):
        got = merge("centered_clip", [*honest, vec(*([scale] * 4))], args={"iterations": 10})
        assert np.linalg.norm(got - honest_mean) < 0.5  # the outlier moves it by at most ~tau per step
    assert np.linalg.norm(merge("mean", [*honest, vec(*([1e6] * 4))]) - honest_mean) > 1e4


def test_multi_krum_picks_the_honest_cluster():
    rng = np.random.default_rng(1)
    honest = [vec(*(rng.standard_normal(5) * 0.1 + 1)) for _ in range(6)]
    bad = [vec(*([-50.0] * 5)), vec(*([40.0] * 5))]
    strategy = get_strategy("multi_krum", {"f": 2})
    batch = make_batch([*honest, *bad], [1] * 8)
    chosen = strategy.selected(batch)
    assert len(chosen) == 6
    assert all(np.abs(batch.matrix[i]).max() < 5 for i in chosen)
    got = merge("multi_krum", [*honest, *bad], args={"f": 2})
    assert np.allclose(got, np.mean([d["w"] for d in honest], 0))


def test_weiszfeld_converges_on_a_symmetric_set():
    square = [vec(1, 1), vec(1, -1), vec(-1, 1), vec(-1, -1)]
    shifted = [{"w": d["w"] + np.array([2.0, 3.0])} for d in square]
    got = merge("geometric_median", [*shifted, vec(2, 3)], args={"iterations": 200})
    assert np.allclose(got, [2, 3], atol=1e-6)
    # one far outlier barely moves it
    got = merge("geometric_median", [*shifted, vec(1e6, 1e6)], args={"iterations": 500})
    assert np.linalg.norm(got - np.array([2, 3])) < 1.5


@pytest.mark.parametrize("name", ALL)
def test_bitwise_determinism_and_permutation_invariance(name):
    deltas = random_deltas()
    weights = [3, 1, 4, 1, 5, 9, 2]
    s = get_strategy(name, {})
    first = s.merge(deltas, weights, round_seed=7)
    again = get_strategy(name, {}).merge(deltas, weights, round_seed=7)
    perm = [4, 0, 6, 2, 1, 5, 3]
    permuted = s.merge([deltas[i] for i in perm], [weights[i] for i in perm], round_seed=7)
    for k in ("w", "b"):
        assert first[k].dtype == np.float64
        assert first[k].tobytes() == again[k].tobytes() == permuted[k].tobytes()
    assert first["b"].shape == (2, 3)


@pytest.mark.parametrize("name", ALL)
def test_sparse_tensor_and_dense_inputs_agree(name):
    deltas = random_deltas(n=5)
    sparse = []
    for d in deltas:
        ts = []
        for k, v in d.items():
            idx = np.flatnonzero(v)
            ts.append(SparseTensor(k, v.shape, idx, v.reshape(-1)[idx]))
        sparse.append(Update("r", 0, "0" * 64, bytes(32), 1, 5, tuple(ts)))
    a = get_strategy(name, {}).merge(deltas, [1, 2, 3, 4, 5], round_seed=1)
    b = get_strategy(name, {}).merge(sparse, [1, 2, 3, 4, 5], round_seed=1)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_zero_weight_dropped_and_empty_input():
    assert merge("weighted_mean", [vec(1.0), vec(100.0)], [1, 0]).tolist() == [1.0]
    assert get_strategy("coordinate_median").merge([], [], round_seed=0) == {}


def test_sparse_aware_median_is_not_dragged_to_zero():
    # 8 deltas, each touching its own 1% of 800 coordinates plus a shared block touched by all
    rng = np.random.default_rng(5)
    deltas = []
    for i in range(8):
        v = np.zeros(800)
        v[i * 8 : i * 8 + 8] = rng.uniform(1, 2, 8)  # only this delta touches these
        v[700:704] = rng.uniform(1, 2, 4)  # everyone touches these
        deltas.append({"w": v})
    honest = np.mean([d["w"] for d in deltas], 0)
    dense = merge("coordinate_median", deltas, args={"sparse": False})
    sparse = merge("coordinate_median", deltas)
    assert not dense[:64].any()  # the classical median zeroes every coordinate fewer than half touch
    assert np.allclose(sparse[:64], honest[:64])  # one toucher: its value times 1/8 = the mean
    assert (sparse[64:700] == 0).all()  # touched by no one: stays 0
    assert np.allclose(sparse[700:704], np.median([d["w"][700:704] for d in deltas], 0))
    assert np.linalg.norm(sparse - honest) < 0.2 * np.linalg.norm(dense - honest)
    trimmed = merge("trimmed_mean", deltas)
    assert np.allclose(trimmed[:64], honest[:64])
    # min_support pads with zeros: a coordinate touched by fewer deltas is robust again (and zero)
    padded = merge("coordinate_median", deltas, args={"min_support": 5})
    assert not padded[:64].any()


def test_sign_flip_attack_breaks_mean_not_centered_clip():
    rng = np.random.default_rng(2)
    honest = [{"w": 1 + 0.1 * rng.standard_normal(50)} for _ in range(6)]
    bad = [attacks.sign_flip(d) for d in honest[:2]]
    target = np.mean([d["w"] for d in honest], 0)
    assert np.linalg.norm(merge("mean", honest + bad) - target) > 100
    assert np.linalg.norm(merge("centered_clip", honest + bad) - target) < 0.5 * np.linalg.norm(target)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("trimmed_mean", {"beta": 0.5}),
        ("trimmed_mean", {"beta": "x"}),
        ("dare", {"p": 1}),
        ("ties", {"k": 0}),
        ("coordinate_median", {"sparse": "maybe"}),
        ("centered_clip", {"start": "zero"}),
        ("centered_clip", {"iterations": 1.5}),
        ("multi_krum", {"f": -1}),
        ("mean", {"lambda": 1}),
        ("geometric_median", {"eps": "nan"}),
    ],
)
def test_bad_args(name, args):
    with pytest.raises(StrategyError):
        get_strategy(name, args)


def test_bad_inputs():
    s = get_strategy("mean")
    with pytest.raises(StrategyError, match="shape"):
        s.merge([vec(1, 2), vec(1)], [1, 1], round_seed=0)
    with pytest.raises(StrategyError, match="weights"):
        s.merge([vec(1)], [1, 2], round_seed=0)
    with pytest.raises(StrategyError, match="finite"):
        s.merge([vec(np.nan)], [1], round_seed=0)
    with pytest.raises(StrategyError, match="weight"):
        s.merge([vec(1)], [-1], round_seed=0)
    with pytest.raises(StrategyError, match="round_seed"):
        s.merge([vec(1)], [1], round_seed=1.5)


def test_every_permutation_of_a_small_set():
    deltas = [vec(1, 0, 5), vec(0, 2, -1), vec(3, 0, 0)]
    for name in ALL:
        outs = {
            get_strategy(name)
            .merge([deltas[i] for i in p], [[1, 2, 3][i] for i in p], round_seed=3)["w"]
            .tobytes()
            for p in itertools.permutations(range(3))
        }
        assert len(outs) == 1, name
