"""The dense path's pure parts: fixed-point integers in the narrowest type that holds them, by range.

A dense round's weighted mean (docs/rounds.md, "the dense path") sums the participants' fixed-point
contributions (rounds/fixedpoint.py: int64, ``|q| <= 2**40``) with potluck's own reduce-scatter and
all-gather, where participant i reduces coordinates ``range_bounds(L, n)[i]`` (the sliced path's
split). Every range travels as integers, never as float64: in the narrowest of int8, int16, int32 and
int64 that holds the range's values exactly (chosen per range, named by the sender, checked by the
receiver). A dense update of float32 values around 1e-3 quantizes to |q| < 2**20, so a range moves in
int32: the bytes of the float32 model, half of the float64 vector hivemind's all-reduce carries.

A range's bytes are named by :func:`digest`, a BLAKE3 hash over a domain tag, the dtype and the bytes,
so that the same bytes read as another type have another digest; a reducer signs the digest of its
merged range (a :class:`potluck.rounds.slices.SliceHeader` whose ``root`` is this digest), the
receivers hash while they receive (:class:`RangeHasher`). BLAKE3, not SHA-256: every byte of a dense
round is hashed by its sender and its receiver, and on the 2-core box BLAKE3 hashes ~8 GB per CPU
second against SHA-256's ~2 GB (measured with python's hashlib and blake3 1.0.11 on 25 MB).
"""

from __future__ import annotations

import hashlib

import blake3
import numpy as np

from potluck.rounds.slices import slice_bounds

__all__ = [
    "NARROW",
    "BadRange",
    "RangeHasher",
    "attempt_key",
    "decode",
    "digest",
    "encode",
    "narrowest",
    "range_bounds",
    "wire_dtype",
]

DOMAIN = b"potluck/dense-range/v1"
NARROW = ("|i1", "<i2", "<i4", "<i8")  # the wire types, narrowest first (little-endian)
range_bounds = slice_bounds  # reducer i's coordinates [lo, hi): contiguous, 256-aligned


class BadRange(ValueError):
    """A range's bytes or type as received do not check out."""


def attempt_key(run_id: str, round_: int, attempt: int) -> bytes:
    """The 32-byte name of one attempt's dense exchange (what its tickets and requests are bound to)."""
    return hashlib.sha256(f"{DOMAIN.decode()}/{run_id}/{round_}/{attempt}".encode()).digest()


def narrowest(values: np.ndarray) -> np.dtype:
    """The narrowest wire type of :data:`NARROW` that holds every value of the int64 ``values``."""
    v = np.asarray(values)
    if not np.issubdtype(v.dtype, np.integer):
        raise ValueError(f"dense ranges are integers, got {v.dtype}")
    if v.size == 0:
        return np.dtype(NARROW[0])
    low, high = int(v.min()), int(v.max())
    for name in NARROW:
        info = np.iinfo(np.dtype(name))
        if info.min <= low and high <= info.max:
            return np.dtype(name)
    raise ValueError("values beyond int64")  # unreachable for int64 input


def encode(values: np.ndarray) -> np.ndarray:
    """``values`` (integers) as a contiguous little-endian array of their :func:`narrowest` type."""
    return np.ascontiguousarray(values, dtype=narrowest(values))


def wire_dtype(name: str) -> np.dtype:
    """The wire type a sender named (``"<i4"`` ...), or :class:`BadRange`."""
    if name not in NARROW:
        raise BadRange(f"a dense range in {name!r}: not one of {', '.join(NARROW)}")
    return np.dtype(name)


def decode(data: bytes | bytearray | memoryview | np.ndarray, dtype: str, count: int) -> np.ndarray:
    """The ``count`` integers of a received range as int64 (:class:`BadRange` for a wrong size or type)."""
    t = wire_dtype(dtype)
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8)
    if raw.size != count * t.itemsize:
        raise BadRange(f"{raw.size} bytes for {count} values of {dtype}")
    return raw.view(t).astype(np.int64)


class RangeHasher:
    """:func:`digest` computed piece by piece, as the bytes arrive."""

    def __init__(self, dtype: str):
        self._h = blake3.blake3(DOMAIN + b"\x00" + wire_dtype(dtype).str.encode() + b"\x00")

    def update(self, piece: bytes | bytearray | memoryview) -> None:
        self._h.update(piece)

    def digest(self) -> bytes:
        return self._h.digest()


def digest(array: np.ndarray) -> bytes:
    """The digest of an encoded range: BLAKE3 (32 bytes) over the domain, its wire type and its bytes."""
    a = np.ascontiguousarray(array)
    h = RangeHasher(a.dtype.newbyteorder("<").str)
    h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.digest()
