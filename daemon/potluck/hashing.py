"""Canonical hashing of tensors and model versions (pure: bytes in, hex digests out).

Hash function: SHA-256. It is the hash already used for update ids, every peer has it, and with the
SHA extensions of current x86/ARM CPUs hashlib runs it at ~1.8 GB/s here versus ~0.8 GB/s for
blake2b, so checking a 400 MB version costs ~0.2 s.

Canonical form (see docs/update-format.md, "Version hash"):

* tensor hash = sha256( msgpack(["potluck/tensor/v1", dtype, shape]) || little-endian C-order bytes ),
  dtype spelled as in safetensors ("F32", "F16", "I64", ...). It does not include the name, so a
  peer can check one downloaded tensor against the hash a commit lists for it.
* version hash = sha256( msgpack(["potluck/version/v1", [[name, tensor hash hex], ...]]) ), names
  sorted by code point (= by UTF-8 bytes).

States are ``Mapping[str, np.ndarray]`` (torch CPU tensors work too via ``np.asarray``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

import msgpack
import numpy as np

TENSOR_DOMAIN = "potluck/tensor/v1"
VERSION_DOMAIN = "potluck/version/v1"
_HASH_RE = re.compile(r"[0-9a-f]{64}")

_DTYPES = {
    np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16", np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64", np.dtype(np.uint32): "U32", np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}  # fmt: skip


def canonical(array: np.ndarray) -> np.ndarray:
    """The array as contiguous little-endian (no copy when it already is)."""
    a = np.asarray(array)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a)


def tensor_hash(array: np.ndarray) -> str:
    """SHA-256 hex of one tensor's dtype, shape and little-endian bytes."""
    a = canonical(array)
    dtype = _DTYPES.get(a.dtype.newbyteorder("="))
    if dtype is None:
        raise ValueError(f"unsupported dtype {a.dtype}")
    h = hashlib.sha256(msgpack.packb([TENSOR_DOMAIN, dtype, list(a.shape)]))
    h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.hexdigest()


def tensor_hashes(state: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Per-tensor hashes, sorted by name."""
    return {name: tensor_hash(state[name]) for name in sorted(state)}


def version_hash_of(hashes: Mapping[str, str]) -> str:
    """The version hash from per-tensor hashes (so a version can be named without its bytes)."""
    entries = [[name, hashes[name]] for name in sorted(hashes)]
    return hashlib.sha256(msgpack.packb([VERSION_DOMAIN, entries])).hexdigest()


def version_hash(state: Mapping[str, np.ndarray]) -> str:
    """The canonical hash of a model state (independent of the mapping's order)."""
    return version_hash_of(tensor_hashes(state))


def is_version_hash(value: object) -> bool:
    """A well-formed version (or tensor) hash: 64 lowercase hex digits."""
    return isinstance(value, str) and _HASH_RE.fullmatch(value) is not None
