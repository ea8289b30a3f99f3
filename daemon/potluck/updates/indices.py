"""Sorted unique flat indices <-> bytes: delta-varint, bitmap or Rice-coded gaps, whichever is smallest.

* delta-varint (code 0): ``d[0] = i[0]``, ``d[j] = i[j] - i[j-1]`` (>= 1), each as unsigned LEB128
  (7 bits per byte, least significant group first, high bit = more bytes follow), at most 9 bytes
  per value, no overlong encodings (a multi-byte value never ends with 0x00).
* bitmap (code 1): ``ceil(numel / 8)`` bytes, bit ``i`` set for index ``i``, least significant bit
  first (numpy ``bitorder="little"``), padding bits zero.
* Rice (code 2): Golomb-Rice coded gaps, potluck.updates.rice.

Encoding and decoding are vectorised over bytes-per-value (at most 9 numpy passes), never a Python
loop per index: 1M indices take a few milliseconds either way.
"""

from __future__ import annotations

import numpy as np

from potluck.updates.rice import RICE, rice_decode, rice_encode, rice_size

__all__ = [
    "BITMAP",
    "INDEX_ENCODINGS",
    "RICE",
    "VARINT",
    "decode_indices",
    "encode_indices",
    "varint_decode",
    "varint_encode",
]

VARINT = 0
BITMAP = 1
INDEX_ENCODINGS = (VARINT, BITMAP, RICE)  # the codes a decoder accepts
_MAX_VARINT_BYTES = 9  # 63 bits: every index of an int64-addressable tensor
_BITMAP_CHUNK = 1 << 20  # bytes of bitmap unpacked at a time: bounds the temporary to 8 MiB


def varint_encode(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of each value (< 2**63), concatenated."""
    d = np.ascontiguousarray(values, dtype=np.uint64)
    if d.size == 0:
        return b""
    top = int(d.max())
    if top >= 1 << 63:
        raise ValueError("varint values must be < 2**63")
    if top < 1 << 32:  # the common case: 32-bit arithmetic is about twice as fast
        d = d.astype(np.uint32)
    nbytes = np.ones(d.size, np.uint8)
    for j in range(1, _MAX_VARINT_BYTES):
        if top < 1 << (7 * j):
            break
        nbytes += d >= (1 << (7 * j))
    ends = np.cumsum(nbytes, dtype=np.int64)
    out = np.empty(int(ends[-1]), np.uint8)
    pos = ends - nbytes  # where each value's next byte goes
    sel = None  # None: all values
    for j in range(_MAX_VARINT_BYTES):
        dj = d if sel is None else d[sel]
        nj = nbytes if sel is None else nbytes[sel]
        pj = pos if sel is None else pos[sel]
        byte = ((dj >> (7 * j)) & 0x7F).astype(np.uint8)
        more = nj > j + 1
        byte |= more.view(np.uint8) << 7
        out[pj + j] = byte
        if not more.any():
            break
        sel = np.flatnonzero(more) if sel is None else sel[more]
    return out.tobytes()


def _varint_prefix_sums(data: bytes, count: int) -> np.ndarray:
    """Running sums (uint64, mod 2**64) of exactly ``count`` LEB128 values; ValueError on any
    deviation from the format.

    Vectorised over bytes rather than values: byte ``i`` contributes ``(b[i] & 0x7F) << 7 * p[i]``
    where ``p[i]`` is the number of continuation bytes right before it (its place in its value), so
    one cumulative sum over all bytes, read at each value's last byte, gives the running sums of the
    values. Same results (mod 2**64) as decoding each value and summing, at about half the cost.
    """
    b = np.frombuffer(data, np.uint8)
    if count == 0:
        if b.size:
            raise ValueError("bytes after the last varint")
        return np.zeros(0, np.uint64)
    if b.size == 0 or b[-1] >= 0x80:
        raise ValueError("truncated varint")
    cont = b >= 0x80
    ends = np.flatnonzero(~cont)
    if ends.size != count:
        raise ValueError(f"{ends.size} varints, expected {count}")
    if ends.size == b.size:  # every value is one byte
        return np.cumsum(b, dtype=np.uint64)
    if np.any(cont[:-1] & (b[1:] == 0)):  # a continuation byte followed by a final 0x00
        raise ValueError("overlong varint")
    place = np.zeros(b.size, np.uint8)
    run = cont[:-1]  # run[i - j]: bytes i-1 .. i-j are all continuation bytes
    for j in range(1, _MAX_VARINT_BYTES + 1):
        if not run.any():
            break
        if j == _MAX_VARINT_BYTES:
            raise ValueError(f"varint longer than {_MAX_VARINT_BYTES} bytes")
        place[j:] += run
        run = run[1:] & cont[: run.size - 1]
    place *= 7
    sums = (b & 0x7F).astype(np.uint64)
    np.left_shift(sums, place, out=sums, dtype=np.uint64)
    np.cumsum(sums, out=sums)
    return sums[ends]


def varint_decode(data: bytes, count: int) -> np.ndarray:
    """Decode exactly ``count`` LEB128 values (uint64); ValueError on any deviation from the format."""
    sums = _varint_prefix_sums(data, count)
    out = sums.copy()
    np.subtract(sums[1:], sums[:-1], out=out[1:])  # exact: each value is < 2**63
    return out


def encode_indices(indices: np.ndarray, numel: int) -> tuple[int, bytes]:
    """(encoding code, bytes) of sorted unique ``indices`` in [0, numel): the smallest of the three
    forms (ties: the lower code). Every form decodes to the same indices, so the choice is free."""
    idx = np.asarray(indices, dtype=np.int64)
    deltas = np.diff(idx, prepend=np.int64(0)) if idx.size else idx
    bitmap_len = -(-numel // 8)
    varint_len = _varint_len(deltas)
    rice_len = rice_size(idx) if idx.size else 1
    best = min((varint_len, VARINT), (bitmap_len, BITMAP), (rice_len, RICE))[1]
    if best == BITMAP:
        mask = np.zeros(numel, np.bool_)
        mask[idx] = True
        return BITMAP, np.packbits(mask, bitorder="little").tobytes()
    if best == RICE:
        return RICE, rice_encode(idx)
    return VARINT, varint_encode(deltas.view(np.uint64))


def _varint_len(deltas: np.ndarray) -> int:
    """Bytes of the LEB128 form without building it: one per value, plus one per 7-bit group above."""
    if deltas.size == 0:
        return 0
    top, total = int(deltas.max()), deltas.size
    for j in range(1, _MAX_VARINT_BYTES):
        if top < 1 << (7 * j):
            break
        total += int(np.count_nonzero(deltas >= 1 << (7 * j)))
    return total


def decode_indices(encoding: int, data: bytes, nnz: int, numel: int) -> np.ndarray:
    """Sorted unique int64 indices in [0, numel); ValueError when the payload says anything else."""
    if nnz > numel:
        raise ValueError(f"{nnz} indices for {numel} elements")
    if encoding == VARINT:
        idx = _varint_prefix_sums(data, nnz)  # = cumsum(deltas), wrapping mod 2**64 like it
        # strictly increasing also catches zero deltas (duplicates) and uint64 wrap-around
        if idx.size > 1 and not np.all(idx[1:] > idx[:-1]):
            raise ValueError("indices not strictly increasing")
        if idx.size and int(idx[-1]) >= numel:
            raise ValueError(f"index {int(idx[-1])} out of range for {numel} elements")
        return idx.view(np.int64)
    if encoding == BITMAP:
        if len(data) != -(-numel // 8):
            raise ValueError(f"bitmap of {len(data)} bytes for {numel} elements")
        raw = np.frombuffer(data, np.uint8)
        if numel % 8 and raw[-1] >> (numel % 8):
            raise ValueError("bitmap padding bits set")
        parts = []
        found = 0
        for start in range(0, raw.size, _BITMAP_CHUNK):
            bits = np.unpackbits(raw[start : start + _BITMAP_CHUNK], bitorder="little")
            part = np.flatnonzero(bits)
            found += part.size
            if found > nnz:
                raise ValueError(f"bitmap has more than {nnz} bits set")
            parts.append(part + start * 8)
        if found != nnz:
            raise ValueError(f"bitmap has {found} bits set, expected {nnz}")
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    if encoding == RICE:
        return rice_decode(data, nnz, numel)
    raise ValueError(f"unknown index encoding {encoding}")
