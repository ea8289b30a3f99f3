"""File-level operations behind ``potluck update make/inspect/apply`` (the CLI only parses arguments).

Models are safetensors files; only floating-point tensors take part in updates (integer buffers
such as step counters have no meaningful delta and are left to the base).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from potluck.hashing import version_hash
from potluck.identity import NodeIdentity, node_id_of
from potluck.store.versions import atomic_save, load_state
from potluck.updates.apply import apply_update
from potluck.updates.codec import (
    DecodeLimits,
    EncodedTensor,
    Update,
    encode_update,
    parse_update,
)
from potluck.updates.indices import BITMAP, RICE, VARINT
from potluck.updates.lowrank import EncodedLowRank
from potluck.updates.quantize import VALUE_ENCODINGS
from potluck.updates.reasons import Reason, UpdateRejected
from potluck.updates.sparsify import DEFAULT_DENSITY, sparsify

__all__ = ["apply_update_file", "inspect_update", "make_update"]


def make_update(
    base_path: Path,
    model_path: Path,
    identity: NodeIdentity,
    *,
    density: float = DEFAULT_DENSITY,
    values: str = "int8",
    round: int,
    run: str,
    seq: int,
    sample_count: int,
) -> bytes:
    """Signed update turning the base model into (approximately) the fine-tuned one."""
    base = load_state(Path(base_path))
    model = load_state(Path(model_path))
    if sorted(base) != sorted(model):
        raise ValueError(f"tensor names differ: {sorted(set(base) ^ set(model))[:5]}")
    tensors = []
    for name in sorted(base):
        b, m = base[name], model[name]
        if b.shape != m.shape:
            raise ValueError(f"{name}: shape {m.shape} != base shape {b.shape}")
        if not np.issubdtype(b.dtype, np.floating):
            continue
        delta = np.subtract(m, b, dtype=np.float32)
        tensors.append(sparsify(name, delta, density))
    update = Update(run, round, version_hash(base), identity.public_key, seq, sample_count, tuple(tensors))
    return encode_update(update, identity, values)


def inspect_update(data: bytes, limits: DecodeLimits | None = None) -> dict[str, Any]:
    """What an update says and whether it decodes: never raises on bad input (``valid``/``reason``)."""
    info: dict[str, Any] = {"bytes": len(data), "valid": False}
    try:
        p = parse_update(data, limits, verify_signature=False)
    except UpdateRejected as e:
        return info | {"reason": e.reason.value, "detail": e.detail}
    dense = 4 * sum(t.numel for t in p.tensors)
    info |= {
        "id": p.update_id,
        "author": node_id_of(p.author),
        "run": p.run,
        "round": p.round,
        "base": p.base,
        "seq": p.seq,
        "sample_count": p.sample_count,
        "created_ms": p.created_ms,
        "signature_ok": p.signature_ok,
        "tensors": [_tensor_info(t) for t in p.tensors],
        "nonzeros": sum(t.nnz for t in p.tensors),
        "dense_fp32_bytes": dense,
        "compression_ratio": dense / len(data),
    }
    try:
        if not p.signature_ok:
            raise UpdateRejected(Reason.BAD_SIGNATURE, f"by {p.author.hex()}")
        p.decode()
    except UpdateRejected as e:
        return info | {"reason": e.reason.value, "detail": e.detail}
    return info | {"valid": True, "reason": None}


def _tensor_info(t: EncodedTensor | EncodedLowRank) -> dict[str, Any]:
    values = {code: name for name, code in VALUE_ENCODINGS.items()}[t.value_encoding]
    if isinstance(t, EncodedLowRank):
        return {"name": t.name, "shape": list(t.shape), "nonzeros": t.nnz, "bytes": t.payload_size,
                "form": "lowrank", "rank": t.rank, "values": values}  # fmt: skip
    return {
        "name": t.name,
        "shape": list(t.shape),
        "nonzeros": t.nnz,
        "bytes": t.payload_size,
        "indices": {VARINT: "delta-varint", BITMAP: "bitmap", RICE: "rice"}[t.index_encoding],
        "values": values,
    }


def apply_update_file(base_path: Path, data: bytes, out_path: Path, *, scale: float = 1.0) -> str:
    """Verify ``data`` against the base file, write base + delta to ``out_path``; return its version hash.

    Raises :class:`UpdateRejected` (unknown_base when the update was made against another version).
    """
    base = load_state(Path(base_path))
    parsed = parse_update(data)
    base_hash = version_hash(base)
    if parsed.base != base_hash:
        raise UpdateRejected(Reason.UNKNOWN_BASE, f"update is against {parsed.base}, file is {base_hash}")
    for t in parsed.tensors:
        if t.name not in base or tuple(base[t.name].shape) != t.shape:
            raise UpdateRejected(Reason.SHAPE_MISMATCH, f"{t.name}: not in the base with shape {t.shape}")
    new = apply_update(base, parsed.decode(), scale, inplace=True)
    atomic_save(new, Path(out_path))
    return version_hash(new)
