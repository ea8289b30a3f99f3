"""potluck.updates.apply: base + scale * delta, in place or not, and weighted sums into a buffer."""

import numpy as np
import pytest

from potluck.updates.apply import accumulate, apply_update
from potluck.updates.codec import SparseTensor, decode_update
from tests.updates.builders import build, sparse


def test_apply_update(identity):
    base = {name: np.ones(shape, np.float32) for name, shape in {"w": (4, 5), "b": (3,)}.items()}
    t = SparseTensor("w", (4, 5), np.array([0, 7, 19]), np.array([1.0, -2.0, 0.5], np.float32))
    out = apply_update(base, build(identity, tensors=(t,)), scale=2.0)
    expected = np.ones(20, np.float32)
    expected[[0, 7, 19]] += [2.0, -4.0, 1.0]
    np.testing.assert_array_equal(out["w"].reshape(-1), expected)
    np.testing.assert_array_equal(base["w"], 1)  # not modified
    assert out["b"] is base["b"]
    apply_update(base, build(identity, tensors=(t,)), inplace=True)
    assert base["w"].reshape(-1)[7] == -1.0
    with pytest.raises(ValueError):
        apply_update({"w": np.ones(3, np.float32)}, build(identity, tensors=(t,)))


def test_apply_update_dtypes_and_atomic_errors(identity):
    t = SparseTensor("w", (2, 3), np.array([1, 5]), np.array([0.25, -1.0], np.float32))
    for dtype in (np.float16, np.float32, np.float64):
        out = apply_update({"w": np.zeros((2, 3), dtype)}, build(identity, tensors=(t,)), scale=2.0)
        assert out["w"].dtype == dtype
        np.testing.assert_array_equal(out["w"].reshape(-1), [0, 0.5, 0, 0, 0, -2.0])
    u = build(identity, tensors=(t, SparseTensor("x", (3,), np.array([0]), np.ones(1, np.float32))))
    base = {"w": np.zeros((2, 3), np.float32)}
    with pytest.raises(ValueError):  # "x" is unknown: nothing is modified
        apply_update(base, u, inplace=True)
    np.testing.assert_array_equal(base["w"], 0)
    with pytest.raises(ValueError):
        apply_update({"w": np.zeros((3, 2), np.float32).T}, build(identity, tensors=(t,)), inplace=True)


def test_accumulate_matches_dense_sum(identity, valid):
    tensors = [(sparse("layer.weight", (16, 32), 40, seed=s),) for s in range(4)]
    updates = [decode_update(valid(tensors=ts)) for ts in tensors]
    weights = [0.5, 2.0, 1.0, 1 / 3]
    for dtype in (np.float32, np.float64):
        buffer = {"layer.weight": np.zeros((16, 32), dtype), "other": np.ones(3, dtype)}
        expected = np.zeros(16 * 32, np.float64)
        for u, w in zip(updates, weights, strict=True):
            accumulate(buffer, u, w)
            t = u.update.tensors[0]
            expected[t.indices] += w * t.values.astype(np.float64)
        assert buffer["layer.weight"].dtype == dtype
        tol = 0 if dtype == np.float64 else 1e-6
        np.testing.assert_allclose(buffer["layer.weight"].reshape(-1), expected, rtol=tol, atol=tol)
        np.testing.assert_array_equal(buffer["other"], 1)
    with pytest.raises(ValueError):
        accumulate({"layer.weight": np.zeros((32, 16), np.float32)}, updates[0])
    with pytest.raises(ValueError):
        accumulate({}, updates[0])
