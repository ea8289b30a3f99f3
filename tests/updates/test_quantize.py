"""Value encoding 2 (sign): the spec's example, round trips through the codec, malformed forms refused."""

import msgpack
import numpy as np
import pytest

from potluck.updates.codec import SparseTensor, decode_update, encode_update
from potluck.updates.quantize import BLOCK, SIGN, dequantize, quantize, roundtrip, value_sizes
from potluck.updates.reasons import Reason, UpdateRejected
from tests.updates.builders import body_of, build, sign_body


def test_known_bytes():
    # the example in docs/update-format.md
    vb, sb = quantize(np.array([0.5, -0.25, 0.125, -1.0, 0.75], np.float32), SIGN)
    assert vb == b"\x0a" and sb == bytes.fromhex("0000803f")
    np.testing.assert_array_equal(dequantize(vb, sb, SIGN, 5), [1.0, -1.0, 1.0, -1.0, 1.0])


def test_one_scale_per_block_of_256():
    v = np.concatenate([np.full(BLOCK, -2.0), [0.5, -3.0, 1.0]]).astype(np.float32)
    out = roundtrip(v, SIGN)
    np.testing.assert_array_equal(out[:BLOCK], -2.0)
    np.testing.assert_array_equal(out[BLOCK:], [3.0, -3.0, 3.0])
    assert value_sizes(SIGN, v.size) == (33, 8)


@pytest.mark.parametrize(
    "vb,sb,n",
    [
        (b"\x20", b"\x00\x00\x80\x3f", 5),  # padding bit set
        (b"\x00\x00", b"\x00\x00\x80\x3f", 5),  # one byte too many
        (b"", b"\x00\x00\x80\x3f", 5),  # truncated
        (b"\x00", b"", 5),  # no scale
        (b"\x00", b"\x00\x00\x80\xbf", 5),  # negative scale
        (b"\x00", b"\x00\x00\x00\x80", 5),  # -0.0 scale
    ],
)
def test_dequantize_rejects(vb, sb, n):
    with pytest.raises(ValueError):
        dequantize(vb, sb, SIGN, n)


def _signed_update(identity):
    t = SparseTensor(
        "embed", (64, 8), np.arange(0, 300, 3, dtype=np.int64), np.linspace(-1, 1, 100, dtype=np.float32)
    )
    return encode_update(build(identity, tensors=(t,)), identity, "sign")


def test_round_trip_through_the_codec(identity):
    data = _signed_update(identity)
    (t,) = decode_update(data).update.tensors
    assert body_of(data)[8][0][5] == SIGN
    np.testing.assert_array_equal(t.indices, np.arange(0, 300, 3))
    np.testing.assert_array_equal(t.values, np.where(np.linspace(-1, 1, 100) < 0, -1.0, 1.0))


@pytest.mark.parametrize(
    "field,value,reason",
    [
        (6, b"\x00" * 12, Reason.MALFORMED),  # 100 values need 13 bytes
        (6, b"\x00" * 12 + b"\x10", Reason.MALFORMED),  # padding bit of the 100th value
        (7, b"", Reason.MALFORMED),
        (7, np.float32(-1.0).tobytes(), Reason.MALFORMED),
        (7, np.float32(np.nan).tobytes(), Reason.NON_FINITE),
        (7, np.float32(np.inf).tobytes(), Reason.NON_FINITE),
    ],
)
def test_codec_rejects(identity, field, value, reason):
    body = body_of(_signed_update(identity))
    body[8][0][field] = value
    with pytest.raises(UpdateRejected) as e:
        decode_update(sign_body(msgpack.packb(body, use_bin_type=True), identity))
    assert e.value.reason is reason
