"""Sorted unique flat indices <-> bytes: delta + LEB128 varint, or a bitmap, whichever is smaller.

* delta-varint (code 0): ``d[0] = i[0]``, ``d[j] = i[j] - i[j-1]`` (>= 1), each as unsigned LEB128
  (7 bits per byte, least significant group first, high bit = more bytes follow), at most 9 bytes
  per value, no overlong encodings (a multi-byte value never ends with 0x00).
* bitmap (code 1): ``ceil(numel / 8)`` bytes, bit ``i`` set for index ``i``, least significant bit
  first (numpy ``bitorder="little"``), padding bits zero.

Encoding and decoding are vectorised over bytes-per-value (at most 9 numpy passes), never a Python
loop per index: 1M indices take a few milliseconds either way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BITMAP", "VARINT", "decode_indices", "encode_indices", "varint_decode", "varint_encode"]

VARINT = 0
BITMAP = 1
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


def varint_decode(data: bytes, count: int) -> np.ndarray:
    """Decode exactly ``count`` LEB128 values (uint64); ValueError on any deviation from the format."""
    b = np.frombuffer(data, np.uint8)
    if count == 0:
        if b.size:
            raise ValueError("bytes after the last varint")
        return np.zeros(0, np.uint64)
    if b.size == 0 or b[-1] >= 0x80:
        raise ValueError("truncated varint")
    ends = np.flatnonzero(b < 0x80)
    if ends.size != count:
        raise ValueError(f"{ends.size} varints, expected {count}")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if int(lengths.max()) > _MAX_VARINT_BYTES:
        raise ValueError("varint longer than 9 bytes")
    if np.any(b[ends[lengths > 1]] == 0):
        raise ValueError("overlong varint")
    out = b[starts].astype(np.uint64)  # first byte has no continuation bit only if it is the last
    out &= np.uint64(0x7F)
    sel = np.flatnonzero(lengths > 1)
    j = 1
    while sel.size:
        out[sel] |= (b[starts[sel] + j].astype(np.uint64) & np.uint64(0x7F)) << np.uint64(7 * j)
        j += 1
        sel = sel[lengths[sel] > j]
    return out


def encode_indices(indices: np.ndarray, numel: int) -> tuple[int, bytes]:
    """(encoding code, bytes) of sorted unique ``indices`` in [0, numel), the smaller of the two forms."""
    idx = np.asarray(indices, dtype=np.int64)
    deltas = np.diff(idx, prepend=np.int64(0)) if idx.size else idx
    bitmap_len = -(-numel // 8)
    # varint length without building it: bytes per delta = 1 + number of 7-bit groups above the first
    if idx.size * 1 >= bitmap_len:
        varint_len = bitmap_len + 1
        if idx.size:
            varint_len = int(np.sum(np.maximum(1, -(-_bit_length(deltas) // 7))))
    else:
        varint_len = 0  # fewer indices than bitmap bytes: varint is smaller, no need to count
    if varint_len > bitmap_len:
        mask = np.zeros(numel, np.bool_)
        mask[idx] = True
        return BITMAP, np.packbits(mask, bitorder="little").tobytes()
    return VARINT, varint_encode(deltas.view(np.uint64))


def _bit_length(x: np.ndarray) -> np.ndarray:
    out = np.zeros(x.shape, np.int64)
    v = x.astype(np.uint64)
    for shift in (32, 16, 8, 4, 2, 1):
        big = v >= np.uint64(1 << shift)
        out += big * shift
        v = np.where(big, v >> np.uint64(shift), v)
    return out + (v > 0)


def decode_indices(encoding: int, data: bytes, nnz: int, numel: int) -> np.ndarray:
    """Sorted unique int64 indices in [0, numel); ValueError when the payload says anything else."""
    if nnz > numel:
        raise ValueError(f"{nnz} indices for {numel} elements")
    if encoding == VARINT:
        idx = np.cumsum(varint_decode(data, nnz), dtype=np.uint64)
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
    raise ValueError(f"unknown index encoding {encoding}")
