"""Low-rank tensor entries: round trip, exact expansion, refusal of malformed factors, group checks."""

import dataclasses

import msgpack
import numpy as np
import pytest

from potluck.updates.codec import DecodeLimits, SparseTensor, decode_update, encode_update, parse_update
from potluck.updates.lowrank import LowRankTensor, balance, expand
from potluck.updates.reasons import Reason, UpdateRejected
from potluck.updates.validation import UpdateValidator, ValidationContext
from tests.updates.builders import BASE, RUN, SHAPES, body_of, build, sign_body, sparse


def _factors(rows: int, cols: int, rank: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((rows, rank)) * 0.1).astype(np.float32)
    return a, (rng.standard_normal((rank, cols)) * 0.1).astype(np.float32)


def _lowrank_update(identity, rank: int = 4, values: str = "fp16", **overrides) -> bytes:
    a, b = _factors(16, 32, rank)
    tensors = (LowRankTensor("layer.weight", (16, 32), a, b), sparse("embed", (64, 8), 30))
    return encode_update(build(identity, tensors=tensors, **overrides), identity, values)


def _context(**overrides) -> ValidationContext:
    fields = {"run": RUN, "round": 5, "shapes": SHAPES, "known_bases": frozenset({BASE})} | overrides
    return ValidationContext(**fields)


def _reason(data: bytes, context: ValidationContext | None = None) -> Reason:
    with pytest.raises(UpdateRejected) as info:
        UpdateValidator(context or _context()).validate(data)
    return info.value.reason


@pytest.mark.parametrize("values", ["fp16", "int8"])
def test_round_trip_expands_the_sent_factors(identity, values):
    data = _lowrank_update(identity, values=values)
    parsed = parse_update(data)
    entry = next(t for t in parsed.tensors if t.name == "layer.weight")
    assert entry.rank == 4 and entry.nnz == 4 * (16 + 32)
    assert len(body_of(data)[8][1]) == 6  # the low-rank form: six fields, sorted among the sparse ones
    a, b = entry.factors()
    sent_a, sent_b = _factors(16, 32, 4)
    tol = 1e-3 if values == "fp16" else 0.01
    assert np.allclose(a, sent_a, atol=tol) and np.allclose(b, sent_b, atol=tol)
    delta = next(t for t in decode_update(data).update.tensors if t.name == "layer.weight")
    dense = np.zeros(16 * 32, np.float32)
    dense[delta.indices] = delta.values
    assert np.array_equal(dense.reshape(16, 32), expand(a, b))
    assert np.allclose(dense.reshape(16, 32), a.astype(np.float64) @ b.astype(np.float64), atol=1e-6)


def test_expansion_is_exact_float64_in_fixed_order():
    a, b = _factors(64, 96, 16, seed=3)
    want = np.zeros((64, 96))
    for k in range(16):  # the specified order, one correctly rounded float64 addition per term
        want = want + np.outer(a[:, k].astype(np.float64), b[k].astype(np.float64))
    assert np.array_equal(expand(a, b), want.astype(np.float32))
    assert np.array_equal(expand(a, b), expand(a.copy(order="F"), b.copy(order="F")))


def test_balance_keeps_the_product():
    a, b = _factors(16, 32, 4)
    a[:, 0] *= 1000
    ba, bb = balance(a, b)
    assert np.allclose(expand(ba, bb), expand(a, b), rtol=1e-5, atol=1e-7)
    assert np.allclose(np.linalg.norm(ba, axis=0), np.linalg.norm(bb, axis=1), rtol=1e-5)


def test_validator_accepts_and_norm_is_of_the_expansion(identity):
    data = _lowrank_update(identity)
    signed = UpdateValidator(_context()).validate(data)
    norm = np.sqrt(sum(float(np.sum(t.values.astype(np.float64) ** 2)) for t in signed.update.tensors))
    assert _reason(data, _context(max_norm=norm * 0.99)) is Reason.NORM_EXCEEDED
    UpdateValidator(_context(max_norm=norm * 1.01)).validate(data)


def test_rank_limits(identity):
    data = _lowrank_update(identity, rank=8)
    assert _reason(data, _context(max_rank=4)) is Reason.RANK_EXCEEDED
    assert _reason(data, _context(rank_limits={"layer.weight": 7})) is Reason.RANK_EXCEEDED
    UpdateValidator(_context(max_rank=4, rank_limits={"layer.weight": 8})).validate(data)


def _crafted(identity, edit) -> bytes:
    body = body_of(_lowrank_update(identity))
    entry = next(e for e in body[8] if e[0] == "layer.weight")
    edit(entry)
    return sign_body(body, identity)


def test_malformed_factors_are_refused(identity):
    def rank_above_shape(e):
        e[2] = 17  # > min(16, 32)

    def rank_zero(e):
        e[2], e[4] = 0, b""

    def short_factors(e):
        e[4] = e[4][:-2]

    def three_dims(e):
        e[1] = [16, 32, 1]

    def unknown_encoding(e):
        e[3] = 7

    def nan_factor(e):
        e[4] = np.full(len(e[4]) // 2, np.nan, "<f2").tobytes()

    assert _reason(_crafted(identity, rank_above_shape)) is Reason.RANK_EXCEEDED
    assert _reason(_crafted(identity, rank_zero)) is Reason.MALFORMED
    assert _reason(_crafted(identity, short_factors)) is Reason.MALFORMED
    assert _reason(_crafted(identity, three_dims)) is Reason.MALFORMED
    assert _reason(_crafted(identity, unknown_encoding)) is Reason.MALFORMED
    assert _reason(_crafted(identity, nan_factor)) is Reason.NON_FINITE


def test_overflowing_product_is_non_finite(identity):
    a = np.full((16, 4), 1e30, np.float32)  # int8 scales carry it; fp16 factors could not overflow
    t = LowRankTensor("layer.weight", (16, 32), a, np.full((4, 32), 1e30, np.float32))
    data = encode_update(build(identity, tensors=(t,)), identity, "int8")
    assert _reason(data) is Reason.NON_FINITE


def test_shape_checked_against_the_model(identity):
    a, b = _factors(32, 16, 4)
    t = LowRankTensor("layer.weight", (32, 16), a, b)  # transposed
    assert _reason(encode_update(build(identity, tensors=(t,)), identity)) is Reason.SHAPE_MISMATCH
    t = LowRankTensor("nope", (32, 16), a, b)
    assert _reason(encode_update(build(identity, tensors=(t,)), identity)) is Reason.SHAPE_MISMATCH


def test_encoder_refuses_bad_factors(identity):
    a, b = _factors(16, 32, 4)
    with pytest.raises(ValueError, match="do not make shape"):
        encode_update(build(identity, tensors=(LowRankTensor("layer.weight", (16, 32), a, b.T),)), identity)
    with pytest.raises(ValueError, match="2-D"):
        encode_update(build(identity, tensors=(LowRankTensor("layer.bias", (16,), a, b),)), identity)


def test_frozen_and_density_limits(identity, valid):
    data = _lowrank_update(identity)
    assert _reason(data, _context(frozen=frozenset({"layer.weight"}))) is Reason.FROZEN_TENSOR
    assert _reason(valid(), _context(frozen=frozenset({"embed"}))) is Reason.FROZEN_TENSOR
    # the builder's embed entry has 300 of 512 entries
    assert _reason(valid(), _context(density_limits={"embed": 0.5})) is Reason.DENSITY_EXCEEDED
    UpdateValidator(_context(density_limits={"embed": 300 / 512})).validate(valid())
    # a low-rank entry is bound by its rank, not by a density
    UpdateValidator(_context(density_limits={"layer.weight": 0.01})).validate(data)


def test_an_old_decoder_refuses_the_form_cleanly(identity):
    """A decoder that knows only 8-field entries (simulated: the 6-field form hidden) says malformed."""
    body = body_of(_lowrank_update(identity))
    entry = next(e for e in body[8] if e[0] == "layer.weight")
    entry.append(b"")  # 7 fields: neither form
    with pytest.raises(UpdateRejected) as info:
        parse_update(sign_body(body, identity))
    assert info.value.reason is Reason.MALFORMED and "array of 8" in info.value.detail


def test_oversized_low_rank_header(identity):
    data = _lowrank_update(identity)
    with pytest.raises(UpdateRejected) as info:
        parse_update(data, dataclasses.replace(DecodeLimits(), max_numel=100))
    assert info.value.reason is Reason.OVERSIZED


def test_decoded_low_rank_is_a_sparse_tensor(identity):
    signed = decode_update(_lowrank_update(identity))
    assert all(isinstance(t, SparseTensor) for t in signed.update.tensors)
    assert msgpack.unpackb(msgpack.unpackb(_lowrank_update(identity))[0])[0] == "potluck/update/v1"
