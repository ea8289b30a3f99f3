"""Index encoding 2: Golomb-Rice coded gaps (docs/update-format.md, "Index encodings").

Gaps ``g[0] = i[0]``, ``g[j] = i[j] - i[j-1] - 1`` (>= 0), each split as ``g = (q << k) + r``:

    indices = [k: 1 byte, 0..40] [r: nnz x k bits] [q: unary, q zero bits then a one bit, per gap]

Both bit streams are least significant bit first and padded with zero bits to a whole byte; the
unary part ends with the byte holding the last one bit. Top-k indices at density p cost about
``log2(1/p) + 1.5`` bits each (varint: 8-16), which is what makes sparse updates of a few hundred
entries small. The two streams are kept apart so that both directions are a few numpy passes (no
Python loop per index): the r bits are one ``unpackbits``, the unary part is the gaps between its
one bits.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_K", "RICE", "rice_decode", "rice_encode", "rice_size"]

RICE = 2  # index_encoding code on the wire
MAX_K = 40  # r fields of up to 40 bits: every gap of a tensor of up to 2**40 elements in one field
_CHUNK = 1 << 20  # unary bytes unpacked at a time: bounds the temporary to 8 MiB


def _gaps(indices: np.ndarray) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return np.zeros(0, np.uint64)
    gaps = np.diff(idx, prepend=np.int64(-1)) - 1
    return gaps.astype(np.uint64)


def _size(gaps: np.ndarray, k: int) -> int:
    unary_bits = int(np.sum(gaps >> np.uint64(k), dtype=np.uint64)) + gaps.size
    return 1 + -(-gaps.size * k // 8) + -(-unary_bits // 8)


def _best_k(gaps: np.ndarray) -> tuple[int, int]:
    """(bytes, k) of the smallest encoding; the optimum is near log2(mean gap), so try around it."""
    if gaps.size == 0:
        return 1, 0
    mean = float(np.mean(gaps, dtype=np.float64))
    k0 = int(np.log2(mean + 1.0))
    return min((_size(gaps, k), k) for k in range(max(0, k0 - 2), min(MAX_K, k0 + 2) + 1))


def rice_size(indices: np.ndarray) -> int:
    """Bytes :func:`rice_encode` would write for sorted unique ``indices`` (without writing them)."""
    return _best_k(_gaps(indices))[0]


def rice_encode(indices: np.ndarray) -> bytes:
    """Sorted unique non-negative ``indices`` -> index encoding 2, with the k that makes it shortest."""
    gaps = _gaps(indices)
    _, k = _best_k(gaps)
    if gaps.size == 0:
        return bytes([k])
    low = b""
    if k:
        bits = np.empty((gaps.size, k), np.uint8)  # row j: r[j], least significant bit first
        for b in range(k):
            bits[:, b] = (gaps >> np.uint64(b)) & np.uint64(1)
        low = np.packbits(bits.reshape(-1), bitorder="little").tobytes()
    q = (gaps >> np.uint64(k)).astype(np.int64)
    ones = np.cumsum(q + 1) - 1  # position of each gap's terminating one bit
    unary = np.zeros(int(ones[-1]) + 1, np.uint8)
    unary[ones] = 1
    return bytes([k]) + low + np.packbits(unary, bitorder="little").tobytes()


def _one_bits(data: np.ndarray, limit: int) -> np.ndarray:
    """Positions of the set bits of ``data`` (LSB first), chunked; ValueError past ``limit`` of them."""
    parts, found = [], 0
    for start in range(0, data.size, _CHUNK):
        part = np.flatnonzero(np.unpackbits(data[start : start + _CHUNK], bitorder="little"))
        found += part.size
        if found > limit:
            raise ValueError(f"more than {limit} rice codes")
        parts.append(part + 8 * start)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def rice_decode(data: bytes, nnz: int, numel: int) -> np.ndarray:
    """Sorted unique int64 indices in [0, numel); ValueError on any deviation from the format."""
    raw = np.frombuffer(data, np.uint8)
    if raw.size == 0:
        raise ValueError("rice indices: missing k")
    k = int(raw[0])
    if k > MAX_K:
        raise ValueError(f"rice k {k} > {MAX_K}")
    if nnz == 0:
        if raw.size != 1 or k:
            raise ValueError("rice indices: no entries must be the single byte 00")
        return np.zeros(0, np.int64)
    low_bits = nnz * k
    low_len = -(-low_bits // 8)
    if raw.size < 1 + low_len + 1:
        raise ValueError("rice indices truncated")
    low = raw[1 : 1 + low_len]
    if low_bits % 8 and low[-1] >> (low_bits % 8):
        raise ValueError("rice padding bits set")
    unary = raw[1 + low_len :]
    if unary[-1] == 0:
        raise ValueError("rice indices: bytes after the last code")
    ones = _one_bits(unary, nnz)
    if ones.size != nnz:
        raise ValueError(f"{ones.size} rice codes, expected {nnz}")
    q = np.diff(ones, prepend=np.int64(-1)) - 1
    if int(q.max()) > (numel >> k):  # checked before shifting: no overflow below
        raise ValueError(f"rice gap out of range for {numel} elements")
    gaps = q.astype(np.uint64) << np.uint64(k)
    if k:
        bits = np.unpackbits(low, bitorder="little", count=low_bits).reshape(nnz, k)
        for b in range(k):
            gaps |= bits[:, b].astype(np.uint64) << np.uint64(b)
    idx = np.cumsum(gaps + np.uint64(1), dtype=np.uint64) - np.uint64(1)
    # every step is at most numel + 2**k < 2**63, so a wrap past 2**64 would show as a decrease
    if nnz > 1 and not np.all(idx[1:] > idx[:-1]):
        raise ValueError("rice indices not strictly increasing")
    if int(idx[-1]) >= numel:
        raise ValueError(f"index {int(idx[-1])} out of range for {numel} elements")
    return idx.view(np.int64)
