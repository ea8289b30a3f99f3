"""Index encoding 2 (Golomb-Rice gaps): round trips, the spec's example, and every malformed form refused."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from potluck.updates.indices import RICE, decode_indices, encode_indices
from potluck.updates.rice import MAX_K, rice_decode, rice_encode, rice_size


def _reference(data: bytes, nnz: int, numel: int) -> list[int] | None:
    """Bit-at-a-time decoder written from docs/update-format.md; None where the input is invalid."""
    if not data or data[0] > MAX_K:
        return None
    k = data[0]
    if nnz == 0:
        return [] if data == b"\x00" else None
    bits = [(byte >> b) & 1 for byte in data[1:] for b in range(8)]
    low_len = -(-nnz * k // 8)
    low, unary = bits[: nnz * k], bits[8 * low_len :]
    if len(data) < 2 + low_len or any(bits[nnz * k : 8 * low_len]):
        return None
    qs, q = [], 0
    for bit in unary:
        if bit:
            qs.append(q)
            q = 0
        else:
            q += 1
    if len(qs) != nnz or q >= 8:  # q >= 8 after the last one bit: a whole zero byte at the end
        return None
    out, last = [], -1
    for j, q in enumerate(qs):
        r = sum(low[j * k + b] << b for b in range(k))
        last += (q << k) + r + 1
        out.append(last)
    return out if out[-1] < numel else None


@pytest.mark.parametrize("numel,nnz", [(1, 1), (10, 1), (10, 10), (1000, 3), (65536, 1311), (1 << 30, 50)])
def test_round_trip(numel, nnz):
    rng = np.random.default_rng(nnz)
    idx = np.sort(rng.choice(numel, nnz, replace=False))
    data = rice_encode(idx)
    assert len(data) == rice_size(idx)
    np.testing.assert_array_equal(rice_decode(data, nnz, numel), idx)
    assert _reference(data, nnz, numel) == idx.tolist()


def test_known_bytes():
    # the example in docs/update-format.md: gaps [0, 0, 126, 299], k = 5
    data = rice_encode(np.array([0, 1, 128, 428]))
    assert data == bytes.fromhex("0500f8052380")
    np.testing.assert_array_equal(rice_decode(data, 4, 429), [0, 1, 128, 428])


def test_empty_is_one_zero_byte():
    assert rice_encode(np.zeros(0, np.int64)) == b"\x00"
    assert rice_decode(b"\x00", 0, 10).size == 0


def test_about_log2_inverse_density_bits():
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(1_000_000, 10_000, replace=False))  # p = 1%: entropy ~8.1 bits
    assert len(rice_encode(idx)) * 8 / idx.size < 8.3


@pytest.mark.parametrize(
    "data,nnz,numel,why",
    [
        (b"", 1, 10, "missing k"),
        (b"\x29\x01", 1, 10, "k above 40"),
        (b"\x01", 0, 10, "no entries but k != 0"),
        (b"\x00\x01", 0, 10, "no entries but bytes follow"),
        (b"\x00", 1, 10, "truncated: no unary part"),
        (b"\x03\x01", 1, 10, "truncated: no unary part after the low bits"),
        (b"\x00\x01\x00", 1, 10, "a trailing zero byte"),
        (b"\x00\x03", 1, 10, "more codes than nnz"),
        (b"\x00\x01", 2, 10, "fewer codes than nnz"),
        (b"\x02\x08\x01", 1, 10, "low padding bits set"),
        (b"\x00\x80", 1, 5, "index 7 out of range"),
        (b"\x28\x00\x00\x00\x00\x00\x80", 1, 1 << 40, "q << 40 out of range"),
        (b"\x00" + b"\x00" * 100 + b"\x01", 1, 800, "a unary gap past numel"),
    ],
)
def test_rejects(data, nnz, numel, why):
    assert _reference(data, nnz, numel) is None, why
    with pytest.raises(ValueError):
        rice_decode(data, nnz, numel)


def test_wrap_around_is_rejected():
    # two gaps of 2**40 - 1 (k = 40, q = 0) in a tensor of 2**40 elements: the second index is past numel
    data = bytes([40]) + (b"\xff" * 5) * 2 + b"\x03"
    with pytest.raises(ValueError):
        rice_decode(data, 2, 1 << 40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=24), st.integers(0, 12), st.sampled_from([1, 7, 64, 1000, 1 << 40]))
def test_arbitrary_bytes_match_the_reference(data, nnz, numel):
    expected = _reference(data, nnz, numel) if nnz <= numel else None
    try:
        got = decode_indices(RICE, data, nnz, numel).tolist()
    except ValueError:
        got = None
    assert got == expected


@settings(max_examples=100, deadline=None)
@given(st.sets(st.integers(0, 5000), max_size=300))
def test_encode_indices_round_trips_whatever_it_picks(indices):
    idx = np.array(sorted(indices), dtype=np.int64)
    code, data = encode_indices(idx, 5001)
    np.testing.assert_array_equal(decode_indices(code, data, idx.size, 5001), idx)
