"""merge_columns: a window of coordinates merges to the bits of the full merge at those coordinates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from potluck.merge import BaseStrategy, StrategyError, get_strategy, make_batch, supports_columns
from potluck.merge.linear import keep_mask
from potluck.updates.codec import SparseTensor, Update
from tests.merge.custom_strategy import FirstScaled

COORDINATE = (
    ("mean", {}),
    ("weighted_mean", {}),
    ("task_arithmetic", {"lambda": 0.3}),
    ("ties", {}),
    ("ties", {"k": 50, "lambda": 1.7}),
    ("ties", {"k": 100}),
    ("dare", {}),
    ("dare", {"p": 0.9, "lambda": 2}),
    ("dare", {"p": 0}),
    ("trimmed_mean", {}),
    ("trimmed_mean", {"beta": 0.2, "sparse": False}),
    ("trimmed_mean", {"min_support": 3}),
    ("coordinate_median", {}),
    ("coordinate_median", {"sparse": False}),
    ("coordinate_median", {"min_support": 2}),
)
VECTOR = ("centered_clip", "multi_krum", "geometric_median")
SHAPES = {"a": (4, 5), "b": (7,), "c": (3, 3, 2), "d": (0,), "e": (13,), "f": (40,)}
LENGTH = sum(math.prod(s) for s in SHAPES.values())


def sparse(name: str, v: np.ndarray, rng: np.random.Generator, unsorted: bool = False) -> SparseTensor:
    """``v`` as a SparseTensor, with some explicit zeros (+0 and -0) among its entries."""
    flat = v.reshape(-1)
    idx = np.flatnonzero(flat)
    extra = rng.choice(flat.size, min(flat.size, 2), replace=False) if flat.size else idx[:0]
    idx = np.union1d(idx, extra).astype(np.int64)
    if unsorted:
        idx = rng.permutation(idx)
    return SparseTensor(name, v.shape, idx, flat[idx].astype(np.float32))


def random_deltas(seed: int, n: int, form: str, shapes=SHAPES, density: float = 0.3):
    """n deltas over random subsets of ``shapes``: ``form`` dense, sparse (Update) or mixed."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n):
        tensors = {}
        for name, shape in shapes.items():
            if rng.random() < 0.25:
                continue  # this delta does not name the tensor
            v = rng.standard_normal(shape).astype(np.float32)
            v[rng.random(shape) > density] = 0
            if v.size:
                v.reshape(-1)[rng.integers(v.size)] = -0.0  # an explicit negative zero
                v.reshape(-1)[rng.integers(v.size)] = np.float32(0.5) * rng.choice([-1, 1])  # ties in |v|
            tensors[name] = v
        kind = form if form != "mixed" else ("dense", "sparse")[u % 2]
        if kind == "dense":
            out.append(tensors)
        else:
            ts = tuple(sparse(k, v, rng, unsorted=u % 3 == 2) for k, v in sorted(tensors.items()))
            out.append(Update("run", 0, "0" * 64, bytes(32), 1, 5, ts) if u % 2 else {t.name: t for t in ts})
    return out


def full_flat(strategy, deltas, weights, seed, shapes=SHAPES) -> np.ndarray:
    merged = strategy.merge(deltas, weights, round_seed=seed)
    parts = []
    for name in sorted(shapes):
        if name in merged:
            assert merged[name].shape == tuple(shapes[name])
            parts.append(merged[name].reshape(-1))
        else:
            parts.append(np.zeros(math.prod(shapes[name])))
    return np.concatenate(parts)


def windows(rng: np.random.Generator, length: int = LENGTH) -> list[np.ndarray]:
    """Single columns, contiguous windows (crossing tensor boundaries), random subsets, all, none."""
    out = [
        np.array([int(rng.integers(length))]),
        np.array([0]),
        np.array([length - 1]),
        np.arange(length),
        np.zeros(0, dtype=np.int64),
        np.arange(15, 35),  # a/b boundary at 20
        np.arange(length // 8 * 3, length // 8 * 4),
        np.arange(length - 30, length),  # e/f
    ]
    for p in (0.05, 0.4):
        out.append(np.flatnonzero(rng.random(length) < p))
    return [c.astype(np.int64) for c in out]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float64 and a.shape == b.shape and a.tobytes() == b.tobytes()


def check(name, args, deltas, weights, seed, shapes=SHAPES, cols_seed=0):
    strategy = get_strategy(name, args)
    full = full_flat(strategy, deltas, weights, seed, shapes)
    length = sum(math.prod(s) for s in shapes.values())
    for cols in windows(np.random.default_rng(cols_seed), length):
        got = strategy.merge_columns(deltas, weights, round_seed=seed, shapes=shapes, columns=cols)
        assert same_bits(got, full[cols]), (name, args, cols[:5], got[:5], full[cols][:5])


@pytest.mark.parametrize(("name", "args"), COORDINATE)
@pytest.mark.parametrize("form", ["dense", "sparse", "mixed"])
def test_window_is_bitwise_the_full_merge(name, args, form):
    for trial in range(3):
        n = (1, 2, 7)[trial]
        deltas = random_deltas(100 * trial + len(form), n, form)
        weights = [int(w) for w in np.random.default_rng(trial).integers(1, 9, n)]
        check(name, args, deltas, weights, seed=trial + 11, cols_seed=trial)


@pytest.mark.parametrize(("name", "args"), COORDINATE)
def test_weight_zero_float_weights_and_missing_tensors(name, args):
    deltas = random_deltas(5, 6, "mixed")
    deltas[2] = {"f": np.arange(40, dtype=np.float32) - 20}  # names one tensor only, weight 0
    deltas[4] = {}  # names nothing
    weights = [0.5, 2.25, 0, 1, 3.0, 0.125]
    check(name, args, deltas, weights, seed=(1 << 64) + 3)
    # a tensor only a weight-0 delta names: the full merge names it (zeros), the window too
    check(name, args, [{"b": np.ones(7)}, {"e": np.ones(13)}], [1, 0], seed=0)
    # every weight 0, or no delta: zeros
    cols = np.arange(10, 30)
    s = get_strategy(name, args)
    for ds, ws in ((deltas[:2], [0, 0]), ([], [])):
        got = s.merge_columns(ds, ws, round_seed=0, shapes=SHAPES, columns=cols)
        assert same_bits(got, np.zeros(cols.size))


@pytest.mark.parametrize(("name", "args"), COORDINATE)
def test_sparse_updates_over_large_tensors(name, args):
    """1%-dense updates over a few thousand coordinates, windows deep inside a tensor (DARE skips ahead)."""
    shapes = {"big": (3001,), "emb": (50, 40), "bias": (9,)}
    deltas = random_deltas(9, 5, "sparse", shapes=shapes, density=0.01)
    check(name, args, deltas, [1, 2, 3, 4, 5], seed=99, shapes=shapes, cols_seed=4)


def test_ties_trim_is_decided_on_the_whole_update():
    # one update, k = 40: 5 non-zeros keep the top 2 (|4| and the first |3|, index 1 before index 5);
    # a window holding only the small entries must still drop them
    shapes = {"x": (4,), "y": (4,)}
    d = {"x": np.array([1.0, -3.0, 0.0, 2.0]), "y": np.array([0.0, 3.0, 4.0, 0.0])}
    s = get_strategy("ties", {"k": 40})
    full = full_flat(s, [d], [1], 0, shapes)
    assert full.tolist() == [0, -3, 0, 0, 0, 0, 4, 0]
    for cols in ([0, 3], [5], [1, 5, 6], [3, 4, 5]):
        got = s.merge_columns([d], [1], round_seed=0, shapes=shapes, columns=np.array(cols))
        assert same_bits(got, full[cols])


def test_keep_mask_range_is_a_slice_of_the_whole_mask():
    whole = keep_mask(5, 2, "w", 1003, 0.3)
    for start, stop in ((0, 0), (0, 1003), (1, 2), (3, 9), (4, 8), (5, 1003), (997, 1001), (1003, 1003)):
        assert np.array_equal(keep_mask(5, 2, "w", 1003, 0.3, start, stop), whole[start:stop])
    with pytest.raises(ValueError):
        keep_mask(5, 2, "w", 10, 0.3, 4, 11)


def test_row_order_and_window_matrix_do_not_depend_on_shapes_or_columns():
    deltas = random_deltas(3, 7, "mixed")
    weights = [1, 2, 3, 4, 5, 6, 7]
    union = make_batch(deltas, weights)
    layout = make_batch(deltas, weights, shapes=SHAPES)
    names = [s.name for s in union.slots]
    assert names == sorted(set(names)) and {s.name for s in layout.slots} == set(SHAPES)
    # same rows, same order: compare the columns of the union's tensors
    for s in union.slots:
        t = next(x for x in layout.slots if x.name == s.name)
        a = union.matrix[:, s.offset : s.offset + s.size]
        b = layout.matrix[:, t.offset : t.offset + t.size]
        assert same_bits(np.ascontiguousarray(a), np.ascontiguousarray(b))
    for cols in windows(np.random.default_rng(1)):
        window = make_batch(deltas, weights, shapes=SHAPES, columns=cols)
        assert window.slots == layout.slots and window.length == cols.size
        assert window.layout_length == LENGTH
        assert same_bits(window.matrix, np.ascontiguousarray(layout.matrix[:, cols]))
        assert window.weights.tobytes() == layout.weights.tobytes()
        for i in range(window.n):
            pos, vals = window.nonzeros(i)
            ref = np.flatnonzero(layout.matrix[i])
            assert np.array_equal(pos, ref) and same_bits(vals, layout.matrix[i, ref])
        covered = np.concatenate([g.slot.offset + g.local for g in window.segments()] or [cols])
        assert np.array_equal(covered, cols)


@pytest.mark.parametrize(("name", "args"), COORDINATE)
def test_permutation_invariant(name, args):
    deltas = random_deltas(8, 5, "mixed")
    weights = [5, 1, 4, 2, 3]
    s = get_strategy(name, args)
    cols = np.arange(30, 90)
    a = s.merge_columns(deltas, weights, round_seed=4, shapes=SHAPES, columns=cols)
    b = s.merge_columns(deltas[::-1], weights[::-1], round_seed=4, shapes=SHAPES, columns=cols)
    assert same_bits(a, b)


@pytest.mark.parametrize("name", VECTOR)
def test_vector_strategies_raise(name):
    s = get_strategy(name)
    assert not supports_columns(s)
    with pytest.raises(StrategyError, match="window"):
        s.merge_columns([{"b": np.ones(7)}], [1], round_seed=0, shapes=SHAPES, columns=np.arange(3))


def test_supports_columns():
    for name, args in COORDINATE:
        assert supports_columns(get_strategy(name, args))
    assert not supports_columns(FirstScaled({}))  # a coordinate BaseStrategy that did not declare windowed
    with pytest.raises(StrategyError):
        FirstScaled({}).merge_columns([], [], round_seed=0, shapes=SHAPES, columns=np.arange(3))

    class Duck:
        name, kind, args = "duck", "coordinate", {}

        def merge(self, deltas, weights, *, round_seed):
            return {}

    assert not supports_columns(Duck())
    Duck.merge_columns = lambda self, *a, **k: np.zeros(0)
    assert supports_columns(Duck())
    Duck.kind = "vector"
    assert not supports_columns(Duck())

    class Windowed(FirstScaled):
        windowed = True

    assert supports_columns(Windowed({}))
    assert isinstance(Windowed({}), BaseStrategy)


@pytest.mark.parametrize(
    ("deltas", "shapes", "cols", "match"),
    [
        ([{"z": np.ones(3)}], SHAPES, np.arange(3), "not a tensor of the layout"),
        ([{"b": np.ones(6)}], SHAPES, np.arange(3), "shape"),
        ([{"b": np.ones(7)}], SHAPES, np.array([3, 2]), "sorted"),
        ([{"b": np.ones(7)}], SHAPES, np.array([2, 2]), "sorted"),
        ([{"b": np.ones(7)}], SHAPES, np.array([LENGTH]), "sorted"),
        ([{"b": np.ones(7)}], SHAPES, np.array([-1, 0]), "sorted"),
        ([{"b": np.ones(7)}], SHAPES, np.array([[1, 2]]), "1-D"),
        ([{"b": np.ones(7)}], SHAPES, np.array([1.0]), "integer"),
        ([{"b": np.ones(7)}], {"b": (-7,)}, np.arange(1), "shape"),
        ([{"b": np.ones(7)}], [("b", (7,))], np.arange(1), "mapping"),
        ([{"b": SparseTensor("b", (7,), np.array([1, 1]), np.ones(2, np.float32))}], SHAPES, [0], "repeated"),
        ([{"b": SparseTensor("b", (7,), np.array([7]), np.ones(1, np.float32))}], SHAPES, [0], "range"),
        ([{"b": SparseTensor("b", (7,), np.array([2]), np.full(1, np.nan))}], SHAPES, [0], "finite"),
        ([{"b": np.full(7, np.inf)}], SHAPES, [0], "finite"),
    ],
)
def test_bad_window_inputs(deltas, shapes, cols, match):
    with pytest.raises(StrategyError, match=match):
        get_strategy("mean").merge_columns(deltas, [1], round_seed=0, shapes=shapes, columns=cols)


def test_round_seed_checked():
    with pytest.raises(StrategyError, match="round_seed"):
        get_strategy("dare").merge_columns([], [], round_seed=1.5, shapes=SHAPES, columns=np.arange(2))
