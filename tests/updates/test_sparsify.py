import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from potluck.updates.quantize import BLOCK, SIGN, roundtrip
from potluck.updates.sparsify import (
    ErrorFeedback,
    k_for,
    scheduled_density,
    sign_survivors,
    sparsify,
    topk_indices,
)


def test_topk_exact_on_sampled_path():
    x = np.random.default_rng(0).standard_normal(3_000_000).astype(np.float32)  # above the exact cutoff
    k = 30_000
    got = topk_indices(x, k)
    want = np.sort(torch.topk(torch.from_numpy(np.abs(x)), k).indices.numpy())
    np.testing.assert_array_equal(got, want)


def test_topk_handles_zeros_and_torch_input():
    x = np.zeros(2_000_000, np.float32)
    x[::1000] = np.arange(1, 2001)
    got = topk_indices(torch.from_numpy(x), 20_000)  # asks for more than there are non-zeros
    np.testing.assert_array_equal(got, np.arange(0, 2_000_000, 1000))
    small = sparsify("w", np.array([[0.1, -5.0], [3.0, 0.0]], np.float32), density=0.5)
    np.testing.assert_array_equal(small.indices, [1, 2])
    np.testing.assert_array_equal(small.values, [-5.0, 3.0])
    assert small.shape == (2, 2) and k_for(4, 0.5) == 2


def test_error_feedback_sum_converges_to_total():
    rng = np.random.default_rng(1)
    shapes = {"a": (64, 64), "b": (1000,)}
    ef = ErrorFeedback(density=0.05, values="int8")
    total = {n: np.zeros(s, np.float32) for n, s in shapes.items()}
    published = {n: np.zeros(int(np.prod(s)), np.float64) for n, s in shapes.items()}
    for _ in range(10):
        delta = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
        for n in shapes:
            total[n] += delta[n]
        for t in ef.compress(delta):
            assert t.indices.size == k_for(int(np.prod(t.shape)), 0.05)
            published[t.name][t.indices] += t.values
    # nothing is lost: published + residual == total
    for n in shapes:
        np.testing.assert_allclose(published[n] + ef.residual[n].reshape(-1), total[n].reshape(-1), atol=1e-4)
    total_norm = np.sqrt(sum(np.sum(total[n].astype(np.float64) ** 2) for n in shapes))
    norms = [ef.residual_norm()]
    zero = {n: np.zeros(s, np.float32) for n, s in shapes.items()}
    for _ in range(60):  # keep publishing with no new delta: the residual drains
        for t in ef.compress(zero):
            published[t.name][t.indices] += t.values
        norms.append(ef.residual_norm())
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(norms))  # never grows
    assert norms[-1] < 0.02 * norms[0]
    err = np.sqrt(sum(np.sum((published[n] - total[n].reshape(-1)) ** 2) for n in shapes))
    assert err < 0.01 * total_norm


def test_error_feedback_carries_quantization_error():
    ef = ErrorFeedback(density=1.0, values="int8")
    x = np.random.default_rng(2).standard_normal(500).astype(np.float32)
    (t,) = ef.compress({"w": x})
    np.testing.assert_array_equal(t.values, roundtrip(x, 1))
    np.testing.assert_allclose(ef.residual["w"], x - t.values, atol=1e-7)


def test_error_feedback_keeps_a_tensors_own_density():
    rng = np.random.default_rng(0)
    delta = {
        "a": rng.standard_normal(1000).astype(np.float32),
        "b": rng.standard_normal(1000).astype(np.float32),
    }
    feedback = ErrorFeedback(0.1)
    feedback.densities = {"b": 0.01}  # a parameter group's max_density below the run's
    sent = {t.name: t for t in feedback.compress(delta)}
    assert (sent["a"].indices.size, sent["b"].indices.size) == (100, 10)


def test_error_feedback_weights_choose_the_entries_and_lose_nothing():
    """``weights``: top-k of |residual| x weight (join --salience), per tensor and model-wide; the sum
    of what is sent plus the residual is still every delta given; bad weights: a clear error."""
    delta = {"a": np.array([1.0, -2.0, 3.0, 4.0], np.float32), "b": np.array([5.0, 1.0], np.float32)}
    for scope, want in (("tensor", {"a": [0], "b": [1]}), ("model", {"a": [0]})):
        feedback = ErrorFeedback(0.25 if scope == "tensor" else 1 / 6, "fp16", scope)
        feedback.weights = {"a": np.array([10, 1, 1, 1], np.float32), "b": np.array([0.1, 9], np.float32)}
        sent = {t.name: t for t in feedback.compress(delta)}
        assert {n: t.indices.tolist() for n, t in sent.items()} == want
        for name, d in delta.items():
            back = np.zeros_like(d)
            if name in sent:
                back[sent[name].indices] = sent[name].values
            np.testing.assert_array_equal(back + feedback.residual[name], d)
    unweighted = ErrorFeedback(0.25, "fp16")
    assert [t.indices.tolist() for t in unweighted.compress(delta)] == [[3], [0]]
    feedback.weights = {"a": np.ones(3, np.float32)}
    with pytest.raises(ValueError, match="a: top-k weights must be 4 finite non-negative values"):
        feedback.compress(delta)


def test_error_feedback_decay_fades_only_what_was_not_sent():
    """``decay`` (join --residual-decay): the residual is multiplied by it before each delta is added, so
    published + residual = sum of decay^(rounds since) x each delta's unsent part; 1 loses nothing."""
    rng = np.random.default_rng(7)
    deltas = [{"a": rng.standard_normal(200).astype(np.float32)} for _ in range(3)]
    norms = []
    for decay in (1.0, 0.5):
        feedback, want = ErrorFeedback(0.05, "fp16", "model"), np.zeros(200, np.float32)
        feedback.decay = decay
        for delta in deltas:
            (t,) = feedback.compress(delta)
            want = want * np.float32(decay) + delta["a"]  # what is left to send, before this round's
            want[t.indices] -= t.values
            np.testing.assert_allclose(feedback.residual["a"], want, rtol=1e-6, atol=1e-6)
        assert t.indices.size == 10  # the top-k itself is unchanged: 5% of 200
        norms.append(feedback.residual_norm())
    assert norms[1] < 0.8 * norms[0]  # decay 0.5 keeps less of the unsent rest


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, width=32).filter(lambda x: x != 0), min_size=1, max_size=700))
def test_sign_survivors_never_grow_an_entry(values):
    v = np.array(values, np.float32)
    keep = sign_survivors(v)
    assert keep.any()  # the largest always survives
    sent = roundtrip(v[keep], SIGN)
    assert np.all(np.abs(v[keep] - sent) <= np.abs(v[keep]))


def test_error_feedback_with_signs_loses_nothing_and_drains():
    rng = np.random.default_rng(4)
    ef = ErrorFeedback(density=0.05, values="sign")
    total = rng.standard_normal((64, 64)).astype(np.float32)
    published = np.zeros(total.size, np.float64)
    (t,) = ef.compress({"a": total})
    assert 0 < t.indices.size <= k_for(total.size, 0.05)
    mags = np.abs(t.values)
    assert all(np.all(mags[s : s + BLOCK] == mags[s : s + BLOCK].max()) for s in range(0, mags.size, BLOCK))
    published[t.indices] += t.values
    np.testing.assert_allclose(published + ef.residual["a"].reshape(-1), total.reshape(-1), atol=1e-5)
    norms = [ef.residual_norm()]
    for _ in range(200):
        (t,) = ef.compress({"a": np.zeros_like(total)})
        published[t.indices] += t.values
        norms.append(ef.residual_norm())
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(norms))
    assert norms[-1] < 0.05 * norms[0]


def test_model_scope_takes_the_largest_of_all_tensors():
    rng = np.random.default_rng(5)
    delta = {
        "big": rng.standard_normal((50, 40)).astype(np.float32),
        "loud": np.where(rng.random(30) < 0.5, -100, 100).astype(np.float32),
        "quiet": 1e-3 * rng.standard_normal(20).astype(np.float32),
    }
    ef = ErrorFeedback(density=0.02, values="int8", scope="model")
    out = {t.name: t for t in ef.compress(delta)}
    k = k_for(2050, 0.02)  # 41 of all 2050 entries
    assert "quiet" not in out  # no entry there: left out of the update
    assert sum(t.indices.size for t in out.values()) == k
    assert out["loud"].indices.size == 30  # every entry of the loud tensor beats the rest
    everything = np.concatenate([np.abs(delta[n]).reshape(-1) for n in sorted(delta)])
    sent = np.concatenate([np.abs(delta[n].reshape(-1)[out[n].indices]) for n in sorted(out)])
    assert sent.min() >= np.sort(everything)[-k]
    for name, t in out.items():
        published = np.zeros(delta[name].size, np.float32)
        published[t.indices] = t.values
        np.testing.assert_allclose(
            published + ef.residual[name].reshape(-1), delta[name].reshape(-1), atol=1e-5
        )
    with pytest.raises(ValueError):
        ErrorFeedback(scope="layer")


def test_model_scope_keeps_a_groups_density_cap():
    rng = np.random.default_rng(6)
    delta = {
        "a": rng.standard_normal(1000).astype(np.float32),
        "b": 10 * rng.standard_normal(1000).astype(np.float32),
    }
    feedback = ErrorFeedback(0.1, scope="model")
    feedback.densities = {"b": 0.01}  # b is the loudest, but its group allows 1%
    sent = {t.name: t for t in feedback.compress(delta)}
    assert sent["b"].indices.size == 10
    top_b = np.sort(np.argsort(-np.abs(delta["b"]))[:10])
    np.testing.assert_array_equal(sent["b"].indices, top_b)  # the largest of b, in index order


def test_scheduled_density_is_the_start_density_for_the_first_rounds_only():
    assert [scheduled_density(r, 0.015, 0.005, 2) for r in range(4)] == [0.005, 0.005, 0.015, 0.015]
    assert scheduled_density(0, 0.01) == scheduled_density(0, 0.01, 0.0, 0) == 0.01  # no sparse start
    feedback = ErrorFeedback(0.015, "sign", "model")
    delta = {"w": np.arange(1, 1001, dtype=np.float32)}
    feedback.density = scheduled_density(0, 0.015, 0.005, 2)
    assert sum(t.indices.size for t in feedback.compress(delta)) == 5  # the sparse start's k
