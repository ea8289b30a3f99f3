"""Update format v1: a signed sparse patch against one model version (docs/update-format.md).

Envelope = msgpack ``[body: bin, signature: bin(64)]``; body = canonical msgpack array
``["potluck/update/v1", run, round, base, author, seq, sample_count, created_ms, tensors]`` with
one ``[name, shape, nnz, index_encoding, indices, value_encoding, values, scales]`` per tensor
(or a low-rank entry of 6 fields, potluck.updates.lowrank), sorted by name. A revert (vcs/revert.py)
is an update of its own kind: a 10th field ``reverts`` (the sorted unique 32-byte ids of the updates it
takes back out), present only when non-empty, with no tensors and sample_count 0. The signature is
Ed25519 over ``sha256(body)``; the update id is that hash in hex.

Decoding never trusts bytes before checking them and raises only :class:`UpdateRejected`:
:func:`parse_update` checks sizes, nesting, types, the domain tag, canonical encoding and the
signature without touching the payloads; :meth:`ParsedUpdate.decode` then decodes indices and
values (the costly part), so the validator can run its cheap context checks in between.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np

from potluck.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, NodeIdentity, verify
from potluck.updates.indices import INDEX_ENCODINGS, decode_indices, encode_indices
from potluck.updates.quantize import SCALED, VALUE_ENCODINGS, dequantize, quantize, value_sizes
from potluck.updates.reasons import Reason, UpdateRejected
from potluck.wire import WireError, bounded_unpackb

if TYPE_CHECKING:
    from potluck.updates.lowrank import EncodedLowRank, LowRankTensor

__all__ = [
    "DOMAIN",
    "DecodeLimits",
    "EncodedTensor",
    "ParsedUpdate",
    "SignedUpdate",
    "SparseTensor",
    "Update",
    "decode_update",
    "encode_update",
    "parse_update",
]

DOMAIN = "potluck/update/v1"
_BODY_FIELDS = 9
MAX_REVERTS = 1024  # update ids one revert names
_TENSOR_FIELDS = 8
_MAX_UINT = (1 << 63) - 1  # every integer field is a non-negative int64


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class SparseTensor:
    """Part of a delta: ``values`` at flat C-order ``indices`` (sorted, unique) of a tensor of ``shape``."""

    name: str
    shape: tuple[int, ...]
    indices: np.ndarray  # int64
    values: np.ndarray  # float32

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Update:
    run: str
    round: int
    base: str  # version hash (hex) the delta applies to
    author: bytes  # Ed25519 public key, 32 bytes
    seq: int  # per-author sequence number, strictly increasing
    sample_count: int  # training samples behind this delta (merge weight)
    tensors: tuple[SparseTensor | LowRankTensor, ...]  # decoded updates: SparseTensor only
    created_ms: int = field(default_factory=_now_ms)  # unix time in milliseconds
    reverts: tuple[str, ...] = ()  # a revert: the update ids (hex, sorted unique) it takes back out


@dataclass(frozen=True)
class SignedUpdate:
    update: Update
    update_id: str  # sha256(body) hex: what the signature covers
    signature: bytes
    size: int  # bytes of the envelope


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what a decoder accepts (all checked before the corresponding allocation)."""

    max_bytes: int = 128 << 20
    max_depth: int = 4  # body -> tensors -> tensor -> shape
    max_tensors: int = 1 << 16
    max_ndim: int = 8
    max_name_len: int = 512
    max_run_len: int = 256
    max_numel: int = 1 << 40  # per tensor


@dataclass(frozen=True)
class EncodedTensor:
    """One tensor entry as received: header checked, payload bytes not yet decoded."""

    name: str
    shape: tuple[int, ...]
    nnz: int
    index_encoding: int
    index_bytes: bytes
    value_encoding: int
    value_bytes: bytes
    scale_bytes: bytes

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def payload_size(self) -> int:
        return len(self.index_bytes) + len(self.value_bytes) + len(self.scale_bytes)

    def decode(self) -> SparseTensor:
        try:
            indices = decode_indices(self.index_encoding, self.index_bytes, self.nnz, self.numel)
        except ValueError as e:
            raise UpdateRejected(Reason.BAD_INDICES, f"{self.name}: {e}") from None
        values = decode_values(self.name, self.value_encoding, self.value_bytes, self.scale_bytes, self.nnz)
        return SparseTensor(self.name, self.shape, indices, values)


def decode_values(name: str, encoding: int, value_bytes: bytes, scale_bytes: bytes, n: int) -> np.ndarray:
    """``n`` float32 values of a tensor entry; UpdateRejected non_finite / malformed."""
    if encoding in SCALED and not np.isfinite(np.frombuffer(scale_bytes, "<f4")).all():
        raise UpdateRejected(Reason.NON_FINITE, f"{name}: NaN or infinite scales")
    try:
        values = dequantize(value_bytes, scale_bytes, encoding, n)
    except ValueError as e:  # parse_update already checked the lengths
        raise UpdateRejected(Reason.MALFORMED, f"{name}: {e}") from None
    if not np.isfinite(values).all():
        raise UpdateRejected(Reason.NON_FINITE, f"{name}: NaN or infinite values")
    return values


@dataclass(frozen=True)
class ParsedUpdate:
    """An update whose structure (and, unless asked otherwise, signature) has been checked."""

    run: str
    round: int
    base: str
    author: bytes
    seq: int
    sample_count: int
    created_ms: int
    tensors: tuple[EncodedTensor | EncodedLowRank, ...]
    update_id: str
    signature: bytes
    signature_ok: bool
    size: int
    reverts: tuple[str, ...] = ()

    def decode(self) -> SignedUpdate:
        """Decode every tensor payload: :class:`UpdateRejected` bad_indices / non_finite / malformed."""
        tensors = tuple(t.decode() for t in self.tensors)
        update = Update(
            self.run, self.round, self.base, self.author, self.seq, self.sample_count, tensors,
            self.created_ms, self.reverts,
        )  # fmt: skip
        return SignedUpdate(update, self.update_id, self.signature, self.size)


# ---------------------------------------------------------------------------------------------- encode


def _check_sparse(t: SparseTensor) -> tuple[np.ndarray, np.ndarray]:
    idx = np.asarray(t.indices)
    vals = np.asarray(t.values)
    if idx.ndim != 1 or vals.ndim != 1 or idx.size != vals.size:
        raise ValueError(f"{t.name}: indices and values must be 1-D of equal length")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{t.name}: indices must be integers")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx[0] < 0 or idx[-1] >= t.numel or not np.all(idx[1:] > idx[:-1])):
        raise ValueError(f"{t.name}: indices must be sorted, unique and in [0, {t.numel})")
    return idx, vals.astype(np.float32, copy=False)


def encode_update(update: Update, identity: NodeIdentity, values: str = "int8") -> bytes:
    """Serialize and sign ``update`` (its author must be ``identity``); return the envelope bytes."""
    if update.author != identity.public_key:
        raise ValueError("update.author is not the signing identity's public key")
    if values not in VALUE_ENCODINGS:
        raise ValueError(f"values must be one of {sorted(VALUE_ENCODINGS)}, got {values!r}")
    value_encoding = VALUE_ENCODINGS[values]
    entries = []
    if update.reverts and (
        update.tensors or update.sample_count or list(update.reverts) != sorted(set(update.reverts))
    ):
        raise ValueError("a revert carries sorted unique update ids, no tensors and sample_count 0")
    names = [t.name for t in update.tensors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names")
    from potluck.updates.lowrank import LowRankTensor, encode_entry  # it builds on this module

    for t in sorted(update.tensors, key=lambda t: t.name):
        if isinstance(t, LowRankTensor):
            entries.append(encode_entry(t, value_encoding))
            continue
        idx, vals = _check_sparse(t)
        index_encoding, index_bytes = encode_indices(idx, t.numel)
        value_bytes, scale_bytes = quantize(vals, value_encoding)
        entries.append(
            [t.name, [int(s) for s in t.shape], int(idx.size), index_encoding, index_bytes,
             value_encoding, value_bytes, scale_bytes]
        )  # fmt: skip
    fields = [DOMAIN, update.run, update.round, bytes.fromhex(update.base), update.author, update.seq,
              update.sample_count, update.created_ms, entries]  # fmt: skip
    if update.reverts:
        fields.append([bytes.fromhex(u) for u in update.reverts])
    body = msgpack.packb(fields, use_bin_type=True)
    signature = identity.sign(hashlib.sha256(body).digest())
    return msgpack.packb([body, signature], use_bin_type=True)


# ---------------------------------------------------------------------------------------------- decode


def _malformed(detail: str) -> UpdateRejected:
    return UpdateRejected(Reason.MALFORMED, detail)


def _uint(x: Any, what: str, top: int = _MAX_UINT) -> int:
    if type(x) is not int or not 0 <= x <= top:
        raise _malformed(f"{what} must be an integer in [0, {top}]")
    return x


def _bin(x: Any, what: str, size: int | None = None) -> bytes:
    if type(x) is not bytes or (size is not None and len(x) != size):
        raise _malformed(f"{what} must be {size if size is not None else 'a'}-byte bin")
    return x


def _unpack(data: bytes, max_bytes: int, max_depth: int, **limits: int) -> Any:
    try:
        return bounded_unpackb(data, max_bytes, max_depth, **limits)
    except WireError as e:
        raise UpdateRejected(Reason(e.kind), str(e)) from None


def _parse_tensor(entry: Any, limits: DecodeLimits) -> EncodedTensor | EncodedLowRank:
    from potluck.updates import lowrank  # it builds on this module

    if type(entry) is list and len(entry) == lowrank.FIELDS:
        return lowrank.parse_entry(entry, limits.max_name_len, limits.max_numel)
    if type(entry) is not list or len(entry) != _TENSOR_FIELDS:
        raise _malformed(f"a tensor entry must be an array of {_TENSOR_FIELDS} (sparse) or 6 (low-rank)")
    name, shape, nnz, index_encoding, index_bytes, value_encoding, value_bytes, scale_bytes = entry
    if type(name) is not str or not 0 < len(name) <= limits.max_name_len:
        raise _malformed("tensor name must be a non-empty str")
    if type(shape) is not list or len(shape) > limits.max_ndim:
        raise _malformed(f"{name}: shape must be an array of at most {limits.max_ndim} dims")
    dims = tuple(_uint(d, f"{name}: dim", limits.max_numel) for d in shape)
    numel = math.prod(dims)
    if numel > limits.max_numel:
        raise UpdateRejected(Reason.OVERSIZED, f"{name}: {numel} elements > {limits.max_numel}")
    nnz = _uint(nnz, f"{name}: nnz", numel)
    if index_encoding not in INDEX_ENCODINGS or type(index_encoding) is not int:
        raise _malformed(f"{name}: unknown index encoding")
    if value_encoding not in VALUE_ENCODINGS.values() or type(value_encoding) is not int:
        raise _malformed(f"{name}: unknown value encoding")
    index_bytes = _bin(index_bytes, f"{name}: indices")
    value_size, scale_size = value_sizes(value_encoding, nnz)
    value_bytes = _bin(value_bytes, f"{name}: values", value_size)
    scale_bytes = _bin(scale_bytes, f"{name}: scales", scale_size)
    return EncodedTensor(
        name, dims, nnz, index_encoding, index_bytes, value_encoding, value_bytes, scale_bytes
    )  # fmt: skip


def parse_update(
    data: bytes, limits: DecodeLimits | None = None, *, verify_signature: bool = True
) -> ParsedUpdate:
    """Check everything but the tensor payloads; raise :class:`UpdateRejected` on the first problem.

    Order: envelope size/nesting/types, body size/nesting, domain tag, field types, canonical
    encoding, signature (skipped, but still reported in ``signature_ok``, when ``verify_signature``
    is false: for ``inspect``).
    """
    limits = limits or DecodeLimits()
    envelope = _unpack(data, limits.max_bytes, 1, max_array_len=2, max_str_len=0, max_map_len=0)
    if type(envelope) is not list or len(envelope) != 2:
        raise _malformed("envelope must be [body, signature]")
    body_bytes = _bin(envelope[0], "body")
    signature = _bin(envelope[1], "signature", SIGNATURE_SIZE)
    body = _unpack(
        body_bytes,
        limits.max_bytes,
        limits.max_depth,
        max_str_len=max(limits.max_name_len, limits.max_run_len, len(DOMAIN)),
        max_array_len=max(limits.max_tensors, limits.max_ndim, _BODY_FIELDS + 1, MAX_REVERTS),
        max_map_len=0,
    )
    if type(body) is not list or not body:
        raise _malformed("body must be an array")
    if body[0] != DOMAIN:
        raise UpdateRejected(Reason.BAD_DOMAIN, f"domain tag {str(body[0])[:64]!r}")
    if len(body) not in (_BODY_FIELDS, _BODY_FIELDS + 1):
        raise _malformed(f"body must have {_BODY_FIELDS} fields ({_BODY_FIELDS + 1}: a revert)")
    _, run, round_, base, author, seq, sample_count, created_ms, entries = body[:_BODY_FIELDS]
    reverts = _reverts(body[_BODY_FIELDS:], entries, sample_count)
    if type(run) is not str or not 0 < len(run) <= limits.max_run_len:
        raise _malformed("run must be a non-empty str")
    round_ = _uint(round_, "round")
    base = _bin(base, "base", 32).hex()
    author = _bin(author, "author", PUBLIC_KEY_SIZE)
    seq = _uint(seq, "seq")
    sample_count = _uint(sample_count, "sample_count")
    created_ms = _uint(created_ms, "created_ms")
    if type(entries) is not list or len(entries) > limits.max_tensors:
        raise _malformed("tensors must be an array")
    tensors = tuple(_parse_tensor(e, limits) for e in entries)
    if any(a.name >= b.name for a, b in itertools.pairwise(tensors)):
        raise _malformed("tensors must be sorted by name, without duplicates")
    if msgpack.packb(body, use_bin_type=True) != body_bytes:
        raise _malformed("body is not canonical msgpack")  # one update, one id
    digest = hashlib.sha256(body_bytes).digest()
    signature_ok = verify(author, signature, digest)
    if verify_signature and not signature_ok:
        raise UpdateRejected(Reason.BAD_SIGNATURE, f"by {author.hex()}")
    return ParsedUpdate(
        run, round_, base, author, seq, sample_count, created_ms, tensors, digest.hex(), signature,
        signature_ok, len(data), reverts,
    )  # fmt: skip


def _reverts(extra: list[Any], entries: Any, sample_count: Any) -> tuple[str, ...]:
    """A revert's ids (hex), from the body's optional 10th field: non-empty, sorted, unique, 32 bytes
    each, and the update carries no tensors and no samples."""
    if not extra:
        return ()
    ids = extra[0]
    if type(ids) is not list or not 0 < len(ids) <= MAX_REVERTS:
        raise _malformed(f"reverts must be an array of 1 to {MAX_REVERTS} update ids")
    raw = [_bin(u, "a reverted update id", 32) for u in ids]
    if any(a >= b for a, b in itertools.pairwise(raw)):
        raise _malformed("reverts must be sorted, without duplicates")
    if entries != [] or sample_count != 0:
        raise _malformed("a revert carries no tensors and sample_count 0")
    return tuple(u.hex() for u in raw)


def decode_update(data: bytes, limits: DecodeLimits | None = None) -> SignedUpdate:
    """Parse, verify and decode an update; raise :class:`UpdateRejected` (and nothing else) on bad input.

    Context-free only: run, round, base, admission, replay and shapes are the validator's job.
    """
    try:
        return parse_update(data, limits).decode()
    except UpdateRejected:
        raise
    except Exception as e:  # a bug must not become a crash on peer input
        raise UpdateRejected(Reason.MALFORMED, f"unexpected {type(e).__name__}: {e}") from None
