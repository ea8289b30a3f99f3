"""Builders shared by the update tests: valid updates, and crafted bodies signed correctly."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import numpy as np

from potluck.identity import NodeIdentity
from potluck.updates.codec import SparseTensor, Update

BASE = "ab" * 32
RUN = "run-1"
SHAPES = {"layer.bias": (16,), "layer.weight": (16, 32), "embed": (64, 8)}


def sparse(name: str, shape: tuple[int, ...], nnz: int, seed: int = 0) -> SparseTensor:
    rng = np.random.default_rng(seed)
    numel = int(np.prod(shape))
    idx = np.sort(rng.choice(numel, nnz, replace=False)).astype(np.int64)
    return SparseTensor(name, shape, idx, rng.standard_normal(nnz).astype(np.float32))


def build(identity: NodeIdentity, **overrides: Any) -> Update:
    fields: dict[str, Any] = {
        "run": RUN,
        "round": 5,
        "base": BASE,
        "author": identity.public_key,
        "seq": 1,
        "sample_count": 100,
        "tensors": (sparse("layer.weight", (16, 32), 20), sparse("embed", (64, 8), 300, seed=1)),
        "created_ms": 1_700_000_000_000,
    }
    fields.update(overrides)
    return Update(**fields)


def sign_body(body: Any, identity: NodeIdentity) -> bytes:
    """Envelope around any body object, correctly signed: gets a crafted body past the signature."""
    raw = body if isinstance(body, bytes) else msgpack.packb(body, use_bin_type=True)
    return msgpack.packb([raw, identity.sign(hashlib.sha256(raw).digest())], use_bin_type=True)


def body_of(data: bytes) -> list[Any]:
    return msgpack.unpackb(msgpack.unpackb(data)[0])
