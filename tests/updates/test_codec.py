import numpy as np
import pytest

from potluck.updates.codec import SparseTensor, decode_update, encode_update
from potluck.updates.indices import BITMAP, RICE, VARINT, decode_indices, encode_indices, varint_encode
from potluck.updates.quantize import BLOCK, FP16, INT8, dequantize, quantize
from potluck.updates.reasons import Reason, UpdateRejected
from potluck.updates.rice import rice_encode
from tests.updates.builders import BASE, body_of, build, sign_body, sparse


def test_round_trip_int8_within_bound(identity):
    update = build(identity)
    signed = decode_update(encode_update(update, identity, "int8"))
    assert signed.update.author == identity.public_key
    assert (signed.update.run, signed.update.round, signed.update.base) == ("run-1", 5, BASE)
    assert (signed.update.seq, signed.update.sample_count) == (1, 100)
    assert signed.update.created_ms == update.created_ms
    got = {t.name: t for t in signed.update.tensors}
    assert [t.name for t in signed.update.tensors] == ["embed", "layer.weight"]  # sorted on the wire
    for t in update.tensors:
        out = got[t.name]
        assert out.shape == t.shape
        np.testing.assert_array_equal(out.indices, t.indices)
        for start in range(0, t.values.size, BLOCK):
            block = t.values[start : start + BLOCK]
            bound = np.abs(block).max() / 127 / 2 * (1 + 2**-20)
            assert np.abs(out.values[start : start + BLOCK] - block).max() <= bound


def test_round_trip_fp16_within_bound(identity):
    rng = np.random.default_rng(3)
    vals = np.concatenate(
        [rng.standard_normal(200), rng.standard_normal(50) * 1e-6, [1e-8, -3e-7, 65504, -1e5, 7e4]]
    ).astype(np.float32)
    t = SparseTensor("w", (2000,), np.arange(0, 4 * vals.size, 4, dtype=np.int64), vals)
    out = decode_update(encode_update(build(identity, tensors=(t,)), identity, "fp16")).update.tensors[0]
    clipped = np.clip(vals, -65504, 65504)
    bound = np.maximum(np.abs(clipped) * 2.0**-11, 2.0**-25)
    assert np.all(np.abs(out.values - clipped) <= bound)
    assert np.all(np.isfinite(out.values))


def test_int8_zero_block_and_partial_block():
    vals = np.zeros(300, np.float32)
    vals[280] = 2.5
    vb, sb = quantize(vals, INT8)
    assert len(vb) == 300 and len(sb) == 8
    out = dequantize(vb, sb, INT8, 300)
    np.testing.assert_array_equal(out[:256], 0)
    assert out[280] == pytest.approx(2.5)
    vb, sb = quantize(vals, FP16)
    assert sb == b"" and len(vb) == 600


def test_update_id_is_stable_and_signature_binds_body(identity):
    update = build(identity)
    a, b = encode_update(update, identity), encode_update(update, identity)
    assert decode_update(a).update_id == decode_update(b).update_id  # Ed25519 is deterministic too
    assert a == b
    other = encode_update(build(identity, seq=2), identity)
    assert decode_update(other).update_id != decode_update(a).update_id


@pytest.mark.parametrize("density", [0.001, 0.05, 0.5, 1.0])
def test_indices_pick_the_smaller_encoding(density):
    numel = 10_000
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(numel, max(1, int(density * numel)), replace=False))
    code, data = encode_indices(idx, numel)
    sizes = {
        VARINT: len(varint_encode(np.diff(idx, prepend=0).astype(np.uint64))),
        BITMAP: -(-numel // 8),
        RICE: len(rice_encode(idx)),
    }
    assert len(data) == sizes[code] == min(sizes.values())
    assert code == (BITMAP if density >= 0.5 else RICE)  # random sparse indices: Rice beats varint
    np.testing.assert_array_equal(decode_indices(code, data, idx.size, numel), idx)


def test_encoder_refuses_bad_input(identity):
    other = type(identity).generate()
    with pytest.raises(ValueError):
        encode_update(build(other), identity)
    bad = SparseTensor("w", (10,), np.array([3, 3]), np.ones(2, np.float32))
    with pytest.raises(ValueError):
        encode_update(build(identity, tensors=(bad,)), identity)
    with pytest.raises(ValueError):
        encode_update(build(identity, tensors=(sparse("a", (4,), 2), sparse("a", (4,), 2))), identity)
    with pytest.raises(ValueError):
        encode_update(build(identity), identity, values="int4")


def test_a_revert_is_an_update_with_a_tenth_field_and_nothing_else(identity):
    ids = ("0a" * 32, "ff" * 32)
    data = encode_update(build(identity, tensors=(), sample_count=0, reverts=ids), identity)
    body = body_of(data)
    assert len(body) == 10 and body[9] == [bytes.fromhex(u) for u in ids]
    signed = decode_update(data)
    assert signed.update.reverts == ids and signed.update.tensors == () and signed.update.sample_count == 0
    # a plain update keeps its 9 fields (its bytes and id are what they were)
    assert len(body_of(encode_update(build(identity), identity))) == 9
    with pytest.raises(ValueError, match="revert"):
        encode_update(build(identity, reverts=ids), identity)  # tensors and samples beside reverts


@pytest.mark.parametrize(
    "problem",
    ["unsorted", "duplicate", "empty", "short id", "with tensors", "with samples", "not an array"],
)
def test_a_malformed_revert_field_is_refused(identity, problem):
    body = body_of(encode_update(build(identity, tensors=(), sample_count=0, reverts=("0a" * 32,)), identity))
    a, b = bytes.fromhex("0a" * 32), bytes.fromhex("ff" * 32)
    if problem == "with tensors":
        body[8] = body_of(encode_update(build(identity), identity))[8]
    elif problem == "with samples":
        body[6] = 1
    else:
        body[9] = {"unsorted": [b, a], "duplicate": [a, a], "empty": [], "short id": [a[:31]],
                   "not an array": a}[problem]  # fmt: skip
    with pytest.raises(UpdateRejected) as info:
        decode_update(sign_body(body, identity))
    assert info.value.reason is Reason.MALFORMED, info.value
