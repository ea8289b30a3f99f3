"""Low-rank tensor entries of update format v1: a 2-D delta sent as rank-r factors (docs/update-format.md).

A low-rank entry is the msgpack array ``[name, [rows, cols], rank, value_encoding, factors, scales]``
(6 fields; a sparse entry has 8, so a decoder that predates this form refuses it as ``malformed``).
``factors`` holds ``A`` (rows x rank) then ``B`` (rank x cols), each row-major, as one stream of
``rank * (rows + cols)`` values in the sparse entries' value encodings (0 fp16, 1 int8 with a fp32
scale per block of 256); the delta is ``A @ B``.

Every node must expand ``A @ B`` to the same bits, and a float32 matmul does not: BLAS kernels differ
by machine, CPU features and thread count in how they block and fuse the sums. :func:`expand` instead
works in float64 with numpy's elementwise ufuncs only: each product ``A[i,k] * B[k,j]`` of two float32
values is exact in float64 (24 + 24 significant bits <= 53), the rank-1 terms are added in the fixed
order k = 0, 1, ..., rank-1 (each addition correctly rounded, IEEE 754), and the sum is rounded once to
float32. The result is then an ordinary sparse delta of every non-zero entry, merged like any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from potluck.updates.codec import SparseTensor, _bin, _malformed, _uint, decode_values
from potluck.updates.quantize import BLOCK, FP16, INT8, quantize
from potluck.updates.reasons import Reason, UpdateRejected

__all__ = ["FIELDS", "EncodedLowRank", "LowRankTensor", "balance", "encode_entry", "expand", "parse_entry"]

FIELDS = 6  # a low-rank entry's array length (a sparse entry's is 8)


def expand(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``A @ B`` as float32, the same bits on every machine (see the module doc for why and how)."""
    a64 = np.asarray(a, dtype=np.float32).astype(np.float64)
    b64 = np.asarray(b, dtype=np.float32).astype(np.float64)
    if a64.ndim != 2 or b64.ndim != 2 or a64.shape[1] != b64.shape[0]:
        raise ValueError(f"factors of shapes {a64.shape} and {b64.shape} do not multiply")
    out = np.zeros((a64.shape[0], b64.shape[1]), dtype=np.float64)
    term = np.empty_like(out)
    for k in range(a64.shape[1]):
        np.multiply(a64[:, k : k + 1], b64[k : k + 1, :], out=term)  # exact: no rounding here
        out += term
    with np.errstate(over="ignore"):  # an overflow becomes inf, which the caller refuses as non_finite
        return out.astype(np.float32)


def balance(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same product with column k of A and row k of B of equal norm (quantizes both alike)."""
    a = np.array(a, dtype=np.float64)
    b = np.array(b, dtype=np.float64)
    na = np.sqrt(np.sum(a * a, axis=0))
    nb = np.sqrt(np.sum(b * b, axis=1))
    s = np.where((na > 0) & (nb > 0), np.sqrt(nb / np.where(na > 0, na, 1)), 1.0)
    return (a * s).astype(np.float32), (b / s[:, None]).astype(np.float32)


@dataclass(frozen=True)
class LowRankTensor:
    """A 2-D delta ``a @ b`` of tensor ``name``: ``a`` is (rows, rank), ``b`` is (rank, cols), float32."""

    name: str
    shape: tuple[int, ...]
    a: np.ndarray
    b: np.ndarray

    @property
    def rank(self) -> int:
        return int(np.shape(self.a)[1]) if np.ndim(self.a) == 2 else 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def encode_entry(t: LowRankTensor, value_encoding: int) -> list[Any]:
    """The wire entry of ``t`` (ValueError on factors that do not fit its shape)."""
    a, b = np.asarray(t.a, dtype=np.float32), np.asarray(t.b, dtype=np.float32)
    if len(t.shape) != 2 or a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{t.name}: a low-rank entry is a 2-D tensor with 2-D factors")
    rows, cols = t.shape
    rank = a.shape[1]
    if a.shape != (rows, rank) or b.shape != (rank, cols) or not 1 <= rank <= min(rows, cols):
        raise ValueError(f"{t.name}: factors {a.shape} and {b.shape} do not make shape {t.shape}")
    if value_encoding not in (FP16, INT8):  # a run's sign values are for sparse entries; factors take int8
        value_encoding = INT8
    value_bytes, scale_bytes = quantize(np.concatenate([a.reshape(-1), b.reshape(-1)]), value_encoding)
    return [t.name, [int(rows), int(cols)], int(rank), value_encoding, value_bytes, scale_bytes]


@dataclass(frozen=True)
class EncodedLowRank:
    """A low-rank entry as received: header checked, factor bytes not yet decoded."""

    name: str
    shape: tuple[int, ...]
    rank: int
    value_encoding: int
    value_bytes: bytes
    scale_bytes: bytes

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nnz(self) -> int:  # values sent
        return self.rank * (self.shape[0] + self.shape[1])

    @property
    def payload_size(self) -> int:
        return len(self.value_bytes) + len(self.scale_bytes)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """(A, B) as float32; UpdateRejected non_finite for NaN or infinite values or scales."""
        values = decode_values(self.name, self.value_encoding, self.value_bytes, self.scale_bytes, self.nnz)
        rows, cols = self.shape
        split = rows * self.rank
        return values[:split].reshape(rows, self.rank), values[split:].reshape(self.rank, cols)

    def decode(self) -> SparseTensor:
        """The expanded delta as a SparseTensor of its non-zero entries (non_finite if it overflows)."""
        delta = expand(*self.factors()).reshape(-1)
        if not np.isfinite(delta).all():
            raise UpdateRejected(Reason.NON_FINITE, f"{self.name}: A @ B overflows float32")
        idx = np.flatnonzero(delta).astype(np.int64)
        return SparseTensor(self.name, self.shape, idx, delta[idx])


def parse_entry(entry: list[Any], max_name_len: int, max_numel: int) -> EncodedLowRank:
    """Check a 6-field entry's header and byte lengths (malformed, oversized, rank_exceeded)."""
    name, shape, rank, value_encoding, value_bytes, scale_bytes = entry
    if type(name) is not str or not 0 < len(name) <= max_name_len:
        raise _malformed("tensor name must be a non-empty str")
    if type(shape) is not list or len(shape) != 2:
        raise _malformed(f"{name}: a low-rank entry's shape is [rows, cols]")
    rows, cols = (_uint(d, f"{name}: dim", max_numel) for d in shape)
    if rows * cols > max_numel or rows + cols > max_numel:
        raise UpdateRejected(Reason.OVERSIZED, f"{name}: {rows} x {cols} elements > {max_numel}")
    rank = _uint(rank, f"{name}: rank", max_numel)
    if rank == 0:
        raise _malformed(f"{name}: rank must be >= 1")
    if rank > min(rows, cols):
        raise UpdateRejected(Reason.RANK_EXCEEDED, f"{name}: rank {rank} > min({rows}, {cols})")
    if value_encoding not in (FP16, INT8) or type(value_encoding) is not int:
        raise _malformed(f"{name}: unknown value encoding for factors")
    n = rank * (rows + cols)
    if value_encoding == FP16:
        value_bytes = _bin(value_bytes, f"{name}: fp16 factors", 2 * n)
        scale_bytes = _bin(scale_bytes, f"{name}: scales", 0)
    else:
        value_bytes = _bin(value_bytes, f"{name}: int8 factors", n)
        scale_bytes = _bin(scale_bytes, f"{name}: scales", 4 * -(-n // BLOCK))
    return EncodedLowRank(name, (rows, cols), rank, value_encoding, value_bytes, scale_bytes)
