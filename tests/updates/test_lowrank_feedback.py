import numpy as np
import pytest

from bench.lowrank_feedback import LowRankFeedback
from potluck.updates.codec import SparseTensor, decode_update, encode_update
from potluck.updates.lowrank import LowRankTensor
from potluck.updates.sparsify import ErrorFeedback
from potluck.updates.validation import UpdateValidator, ValidationContext
from tests.updates.builders import BASE, RUN, SHAPES, build


def _deltas(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(shape) * 0.01).astype(np.float32) for name, shape in SHAPES.items()}


def _received(data: bytes) -> dict[str, np.ndarray]:
    """What a receiver adds to each tensor: the decoded update, low-rank entries expanded."""
    out = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    for t in decode_update(data).update.tensors:
        out[t.name].reshape(-1)[t.indices] += t.values
    return out


def _feedback(rank: int = 2, density: float = 0.25, values: str = "int8") -> LowRankFeedback:
    return LowRankFeedback(rank, ["layer.weight", "embed"], ErrorFeedback(density, values))


@pytest.mark.parametrize("values", ["int8", "fp16"])
def test_nothing_is_lost_only_delayed(identity, values):
    """Everything sent (as the receiver decodes it) plus the residuals equals every delta given."""
    fb = _feedback(values=values)
    given = {name: np.zeros(shape, np.float64) for name, shape in SHAPES.items()}
    received = {name: np.zeros(shape, np.float64) for name, shape in SHAPES.items()}
    for r in range(4):
        delta = _deltas(r)
        tensors = fb.compress(delta)
        assert [t.name for t in tensors] == sorted(t.name for t in tensors)
        kinds = {t.name: type(t) for t in tensors}
        assert kinds == {"embed": LowRankTensor, "layer.bias": SparseTensor, "layer.weight": LowRankTensor}
        assert all(t.rank == 2 for t in tensors if isinstance(t, LowRankTensor))
        data = encode_update(build(identity, tensors=tuple(tensors)), identity, values)
        for name, v in _received(data).items():
            received[name] += v
        for name in SHAPES:
            given[name] += delta[name]
    for name in ("layer.weight", "embed"):
        assert np.allclose(received[name] + fb.residual[name], given[name], atol=1e-6)
    bias = received["layer.bias"] + fb.sparse.residual["layer.bias"]
    assert np.allclose(bias, given["layer.bias"], atol=1e-6)
    assert fb.residual_norm() > 0


def test_a_low_rank_delta_goes_out_whole():
    """A rank-2 delta is sent in one update: only the quantization error stays behind."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((16, 2)), rng.standard_normal((2, 32))
    delta = (a @ b * 0.01).astype(np.float32)
    fb = _feedback(values="fp16")
    fb.compress({"layer.weight": delta})
    assert np.linalg.norm(fb.residual["layer.weight"]) < 1e-3 * np.linalg.norm(delta)
    full = _feedback(rank=1)
    full.compress({"layer.weight": delta})  # rank 1 of a rank-2 delta: the second direction waits
    assert np.linalg.norm(full.residual["layer.weight"]) > 0.1 * np.linalg.norm(delta)


def test_group_rank_and_zero_residual():
    fb = _feedback(rank=4)
    fb.ranks["embed"] = 1
    tensors = {t.name: t for t in fb.compress(_deltas(0))}
    assert tensors["layer.weight"].rank == 4 and tensors["embed"].rank == 1
    zero = _feedback()
    assert [t.name for t in zero.compress({"layer.weight": np.zeros((16, 32), np.float32)})] == []


def test_mixed_update_validates(identity):
    data = encode_update(build(identity, tensors=tuple(_feedback().compress(_deltas(0)))), identity)
    context = ValidationContext(run=RUN, round=5, shapes=SHAPES, known_bases=frozenset({BASE}))
    signed = UpdateValidator(context).validate(data)
    assert {t.name for t in signed.update.tensors} == set(SHAPES)


def test_bad_input():
    with pytest.raises(ValueError, match="rank"):
        LowRankFeedback(0, ["layer.weight"], ErrorFeedback())
    with pytest.raises(ValueError, match="2-D"):
        LowRankFeedback(2, ["layer.bias"], ErrorFeedback()).compress({"layer.bias": np.ones(16, np.float32)})
