"""The dense path's pure parts: fixed-point integers in the narrowest type that holds them, by range.

A dense round's weighted mean (docs/rounds.md, "the dense path") sums the participants' fixed-point
contributions (rounds/fixedpoint.py: int64, ``|q| <= 2**40``) with potluck's own reduce-scatter and
all-gather, where participant i reduces coordinates ``range_bounds(L, n)[i]`` (the sliced path's
split). Every range travels as integers, never as float64: in the narrowest of int8, int16, int32 and
int64 that holds the range's values exactly (chosen per range, named by the sender, checked by the
receiver). A dense update of float32 values around 1e-3 quantizes to |q| < 2**20, so a range moves in
int32: the bytes of the float32 model, half of the float64 vector hivemind's all-reduce carries.

A contribution's part is named by :func:`digest`, a BLAKE3 hash over a domain tag, the dtype and the
bytes, so that the same bytes read as another type have another digest; the receivers hash while they
receive (:class:`RangeHasher`). BLAKE3, not SHA-256: every byte of a dense round is hashed by its sender
and its receiver, and on the 2-core box BLAKE3 hashes ~8 GB per CPU second against SHA-256's ~2 GB
(measured with python's hashlib and blake3 1.0.11 on 25 MB).

A reducer's merged range is named by :func:`tree_digest` instead: a BLAKE3 Merkle tree over leaves of
:data:`LEAF_BYTES` of its encoded bytes, sealed with the domain, the type and the length. The reducer
signs it (a :class:`potluck.rounds.slices.SliceHeader` whose ``root`` is this digest), so any value it
served can be tied to its signature by one leaf and a proof: a :class:`DenseFault`, the evidence that
convicts a reducer whose signed sum is wrong at a coordinate (docs/rounds.md, "the dense path").
The tree costs one Python hash call per leaf: ~0.16 s per 100 MB on the loaded 2-core box against
~0.05 s for the flat hash, and only the merged ranges (the model's bytes once per node) pay it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import blake3
import numpy as np

from potluck.rounds import fixedpoint
from potluck.rounds.slices import (
    MAX_FAULT_BYTES,
    MAX_PROOF,
    BadSlice,
    SliceHeader,
    merkle_levels,
    proof_of,
    slice_bounds,
    verify_merkle,
)
from potluck.signed import RecordFormat
from potluck.updates.codec import SignedUpdate, Update

__all__ = [
    "MAX_FAULT_UPDATES",
    "NARROW",
    "BadRange",
    "DenseFault",
    "RangeHasher",
    "TreeHasher",
    "attempt_key",
    "decode",
    "digest",
    "encode",
    "exact_sum_at",
    "narrowest",
    "range_bounds",
    "tree_digest",
    "wire_dtype",
]

DOMAIN = b"potluck/dense-range/v1"
NARROW = ("|i1", "<i2", "<i4", "<i8")  # the wire types, narrowest first (little-endian)
TREE_DOMAIN = b"potluck/dense-merged/v1"
FAULT_DOMAIN = "potluck/dense-fault/v1"
# bytes of a merged range per Merkle leaf: a fault carries one leaf, the signed header and a proof, under
# slices.MAX_FAULT_BYTES (hivemind's DHT value hazard, shared/HIVEMIND.md) while the header names at
# most MAX_FAULT_UPDATES updates. 8 KiB: a leaf costs one Python hash call (~4 us), so 2 KiB leaves
# took ~0.6 s per 100 MB on the loaded 2-core box and 8 KiB ones ~0.16 s (a flat BLAKE3: ~0.05 s)
LEAF_BYTES = 8192
MAX_FAULT_UPDATES = 128
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


# ---- merged ranges: a Merkle tree, so that one value can be tied to the reducer's signature ------------


def _tleaf(data: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(b"\x00" + data).digest()


def _tnode(left: bytes, right: bytes) -> bytes:
    return blake3.blake3(b"\x01" + left + right).digest()


def _seal(dtype: str, nbytes: int, top: bytes) -> bytes:
    return blake3.blake3(
        TREE_DOMAIN + b"\x00" + dtype.encode() + b"\x00" + nbytes.to_bytes(8, "little") + top
    ).digest()


class TreeHasher:
    """:func:`tree_digest` computed piece by piece, as the bytes arrive (each leaf hashed once complete)."""

    def __init__(self, dtype: str):
        self._dtype = wire_dtype(dtype).str
        self._leaves: list[bytes] = []
        self._rest = bytearray()
        self._bytes = 0

    def update(self, piece: bytes | bytearray | memoryview) -> None:
        view = memoryview(piece).cast("B")
        self._bytes += view.nbytes
        if self._rest:
            take = min(LEAF_BYTES - len(self._rest), view.nbytes)
            self._rest += view[:take]
            view = view[take:]
            if len(self._rest) < LEAF_BYTES:
                return
            self._leaves.append(_tleaf(self._rest))
            self._rest = bytearray()
        full = view.nbytes - view.nbytes % LEAF_BYTES
        self._leaves.extend(_tleaf(view[i : i + LEAF_BYTES]) for i in range(0, full, LEAF_BYTES))
        self._rest += view[full:]

    def levels(self) -> list[list[bytes]]:
        last = [_tleaf(self._rest)] if self._rest or not self._leaves else []
        return merkle_levels(self._leaves + last, _tnode)

    def digest(self) -> bytes:
        return _seal(self._dtype, self._bytes, self.levels()[-1][0])


def _tree(array: np.ndarray) -> tuple[TreeHasher, memoryview]:
    a = np.ascontiguousarray(array)
    h = TreeHasher(a.dtype.newbyteorder("<").str)
    view = memoryview(a.reshape(-1).view(np.uint8))
    h.update(view)
    return h, view


def tree_digest(array: np.ndarray) -> bytes:
    """The digest a reducer signs for its encoded merged range: the root of a BLAKE3 Merkle tree over its
    bytes, :data:`LEAF_BYTES` a leaf (an odd node paired with itself; leaves ``0x00 || bytes``, nodes
    ``0x01 || left || right``), sealed as BLAKE3(TREE_DOMAIN, 0, wire type, 0, u64 byte length, root)."""
    return _tree(array)[0].digest()


def exact_sum_at(
    layout: fixedpoint.Layout, weighted: Sequence[tuple[int, Update | SignedUpdate]], column: int
) -> int | None:
    """The dense sum's value at ``column`` as any honest reducer has it, from the signed updates and their
    weights alone: ``sum_u round(w_u * delta_u / QUANTUM)``. That is what every split among carriers gives
    unless a carrier's sum was clipped there (fixedpoint.contribution), which cannot happen when the
    magnitudes add up to at most BOUND; otherwise None: a value there proves nothing either way."""
    columns = np.array([column], dtype=np.int64)
    parts = [int(fixedpoint.contribution_at(layout, [(w, u)], columns)[0]) for w, u in weighted]
    if sum(abs(p) for p in parts) > fixedpoint.BOUND:
        return None
    return sum(parts)


FAULT = RecordFormat(FAULT_DOMAIN, fields=7, max_bytes=MAX_FAULT_BYTES, max_depth=2, error=BadSlice,
                     max_array_len=MAX_PROOF, max_str_len=64)  # fmt: skip


@dataclass(frozen=True)
class DenseFault:
    """Proof that a dense reducer signed a wrong sum: its signed header, the wire type it served its merged
    range in, one leaf of that range's bytes with the Merkle proof tying it to the signed digest (``top``:
    the tree's root before the seal), and a coordinate in that leaf whose value is not the sum of the
    header's updates."""

    signed: bytes
    dtype: str
    leaf: int
    leaf_bytes: bytes
    top: bytes
    proof: tuple[bytes, ...]
    column: int

    @classmethod
    def make(cls, signed: bytes, encoded: np.ndarray, lo: int, column: int) -> DenseFault:
        """The fault at ``column`` of the range [lo, ...) that the reducer served as ``encoded``."""
        h, view = _tree(encoded)
        offset = (column - lo) * encoded.dtype.itemsize
        leaf = offset // LEAF_BYTES
        levels = h.levels()
        data = bytes(view[leaf * LEAF_BYTES : (leaf + 1) * LEAF_BYTES])
        dtype = encoded.dtype.newbyteorder("<").str
        return cls(signed, dtype, leaf, data, levels[-1][0], tuple(proof_of(levels, leaf)), column)

    def to_bytes(self) -> bytes:
        return FAULT.body(
            self.signed, self.dtype, self.leaf, self.leaf_bytes, self.top, list(self.proof), self.column
        )

    @property
    def id(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes) -> DenseFault:
        signed, dtype, leaf, leaf_bytes, top, proof, column = FAULT.fields_of(data)
        ok = (
            type(signed) is bytes
            and type(dtype) is str
            and type(leaf) is int
            and leaf >= 0
            and type(leaf_bytes) is bytes
            and 0 < len(leaf_bytes) <= LEAF_BYTES
            and type(top) is bytes
            and len(top) == 32
            and type(proof) is list
            and all(type(p) is bytes and len(p) == 32 for p in proof)
            and type(column) is int
        )
        if not ok:
            raise BadSlice("malformed", "wrong dense fault fields")
        fault = cls(signed, dtype, leaf, leaf_bytes, top, tuple(proof), column)
        if fault.to_bytes() != data:
            raise BadSlice("malformed", "not canonical")
        return fault

    def claimed(self) -> tuple[SliceHeader, int]:
        """The accused reducer's signed header and the value it served at ``column``, after checking that
        the leaf is one of its signed range's leaves and the column is in it."""
        header = SliceHeader.verify(self.signed)
        try:
            t = wire_dtype(self.dtype)
        except BadRange as e:
            raise BadSlice("malformed", str(e)) from None
        nbytes = (header.hi - header.lo) * t.itemsize
        start = self.leaf * LEAF_BYTES
        if not (start < nbytes and len(self.leaf_bytes) == min(LEAF_BYTES, nbytes - start)):
            raise BadSlice("not_in_range", "the leaf is not one of the range's leaves")
        first = header.lo + start // t.itemsize
        if not first <= self.column < first + len(self.leaf_bytes) // t.itemsize:
            raise BadSlice("not_in_range", "the column is not in the leaf")
        if _seal(t.str, nbytes, self.top) != header.root or not verify_merkle(
            self.top, self.leaf, self.leaf_bytes, self.proof, _tleaf, _tnode
        ):
            raise BadSlice("bad_proof", "the leaf is not under the signed digest")
        value = np.frombuffer(self.leaf_bytes, dtype=t)[self.column - first]
        return header, int(value)

    def verify(self, expected: Callable[[SliceHeader, int], int | None]) -> SliceHeader:
        """The header of the reducer this fault convicts; :class:`BadSlice` unless the value it signed at
        ``column`` differs from ``expected(header, column)`` (:func:`exact_sum_at` over the header's
        updates; None: undecidable there)."""
        header, value = self.claimed()
        right = expected(header, self.column)
        if right is None:
            raise BadSlice("undecidable", f"coordinate {self.column} may have been clipped")
        if right == value:
            raise BadSlice("no_fault", "the signed value is right")
        return header
