import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from potluck.updates.indices import RICE, VARINT, decode_indices, encode_indices, varint_decode, varint_encode


@pytest.mark.parametrize("top", [1, 127, 128, 16383, 16384, 2**32, 2**63 - 1])
def test_varint_round_trip(top):
    rng = np.random.default_rng(top % 1000)
    v = rng.integers(0, top, 1000, dtype=np.int64, endpoint=True).astype(np.uint64)
    v[:2] = [0, top]
    np.testing.assert_array_equal(varint_decode(varint_encode(v), v.size), v)


def test_varint_known_bytes():
    assert varint_encode(np.array([0, 1, 127, 128, 300], np.uint64)) == bytes(
        [0x00, 0x01, 0x7F, 0x80, 0x01, 0xAC, 0x02]
    )


@pytest.mark.parametrize(
    "data,count",
    [(b"\x80", 1), (b"\x01\x02", 1), (b"\x80\x00", 1), (b"\xff" * 9 + b"\x01", 1), (b"", 1), (b"\x01", 0)],
)
def test_varint_rejects(data, count):
    with pytest.raises(ValueError):
        varint_decode(data, count)


def test_a_million_indices_round_trip_at_about_a_byte_each():
    # speed is bench/update_codec.py's to measure (a timed assert here failed under load)
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(100_000_000, 1_000_000, replace=False))
    code, data = encode_indices(idx, 100_000_000)
    np.testing.assert_array_equal(decode_indices(code, data, idx.size, 100_000_000), idx)
    assert code == RICE and len(data) < 1.05 * idx.size  # ~1.01 bytes per index at 1% (varint: ~1.28)


def _reference_varints(data: bytes, count: int) -> list[int] | None:
    """Byte-at-a-time LEB128 decoder (the spec, literally); None where the input is invalid."""
    out, value, shift, length = [], 0, 0, 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift, length = shift + 7, length + 1
        if length > 9:
            return None
        if byte < 0x80:
            if length > 1 and byte == 0:
                return None  # overlong
            out.append(value)
            value, shift, length = 0, 0, 0
    if length or len(out) != count:
        return None  # truncated, or wrong count
    return out


_byte = st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0x81, 0xFF]) | st.integers(0, 255)


@settings(max_examples=400, deadline=None)
@given(st.lists(_byte, max_size=40).map(bytes), st.integers(0, 12))
def test_varint_decode_matches_reference(data, count):
    expected = _reference_varints(data, count)
    if expected is None:
        with pytest.raises(ValueError):
            varint_decode(data, count)
    else:
        assert varint_decode(data, count).tolist() == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**63 - 1) | st.integers(0, 300), max_size=30))
def test_varint_round_trip_mixed_lengths(values):
    v = np.array(values, np.uint64)
    assert varint_decode(varint_encode(v), v.size).tolist() == values


def test_varint_length_limit_at_every_position():
    one = varint_encode(np.array([5, 2**63 - 1, 300], np.uint64))  # 1 + 9 + 2 bytes
    assert varint_decode(one, 3).tolist() == [5, 2**63 - 1, 300]
    ten = one[:1] + b"\xff" + one[1:]  # a 10-byte value in the middle
    with pytest.raises(ValueError):
        varint_decode(ten, 3)


@pytest.mark.parametrize("deltas", [[0, 1, 2**63 - 1, 2**63 - 1], [5, 2**63 - 1, 2**63 - 1, 1]])
def test_wrapping_indices_are_rejected(deltas):
    data = varint_encode(np.array(deltas, np.uint64))
    with pytest.raises(ValueError):
        decode_indices(VARINT, data, len(deltas), 2**62)
