"""A version stored as a patch of its parent: the entries whose bytes changed and their new values.

File ``<version>.delta.safetensors`` (safetensors: nothing is unpickled). Metadata:
``potluck_version`` (the version), ``potluck_parent`` (the version it patches), ``potluck_names`` (a
JSON list: the i-th patched tensor's name, so any tensor name works) and ``potluck_removed`` (JSON
list of tensors the parent has and this version lacks). Tensors: ``i<k>`` the sorted flat indices of
patched tensor k that changed (uint32, or int64 past 2**32 entries) and ``v<k>`` their new values in
the tensor's dtype; ``f<k>`` instead holds the whole tensor when it is new or its shape or dtype
changed. Entries are compared by their bytes, so -0.0, NaN payloads and every bit come back exactly,
and applying the patch to the parent gives the version's bytes: the store checks the result against
the version hash (store/versions.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from potluck.hashing import canonical

__all__ = ["apply_patch", "make_patch", "patch_bytes"]

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _bits(a: np.ndarray) -> np.ndarray:
    """The entries as unsigned integers of the same width: equal iff their bytes are equal."""
    return a.reshape(-1).view(_UINT[a.dtype.itemsize]) if a.dtype.itemsize in _UINT else a.reshape(-1)


def make_patch(
    parent: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray], parent_version: str, version: str
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of the patch that turns ``parent`` into ``state``."""
    tensors: dict[str, np.ndarray] = {}
    names = []
    for name in sorted(state):
        new = canonical(state[name])
        old = parent.get(name)
        k = len(names)
        if old is None or old.shape != new.shape or old.dtype != new.dtype:
            names.append(name)
            tensors[f"f{k}"] = new
            continue
        changed = np.flatnonzero(_bits(canonical(old)) != _bits(new))
        if changed.size == 0:
            continue
        names.append(name)
        tensors[f"i{k}"] = changed.astype(np.uint32 if new.size <= 1 << 32 else np.int64)
        tensors[f"v{k}"] = new.reshape(-1)[changed]
    metadata = {
        "potluck_version": version,
        "potluck_parent": parent_version,
        "potluck_names": json.dumps(names),
        "potluck_removed": json.dumps(sorted(set(parent) - set(state))),
    }
    return tensors, metadata


def patch_bytes(tensors: Mapping[str, np.ndarray]) -> int:
    """The payload of a patch (indices and values), without the file's header."""
    return sum(t.nbytes for t in tensors.values())


def apply_patch(
    parent: Mapping[str, np.ndarray], tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """The state the patch makes of ``parent`` (``parent`` is not modified). ValueError when the patch
    does not fit the parent (the store reports it as a damaged chain)."""
    names = json.loads(metadata["potluck_names"])
    removed = set(json.loads(metadata["potluck_removed"]))
    out = {name: t for name, t in parent.items() if name not in removed}
    for k, name in enumerate(names):
        if f"f{k}" in tensors:
            out[name] = tensors[f"f{k}"]
            continue
        if name not in parent:
            raise ValueError(f"the patch changes {name!r}, which its parent lacks")
        idx, values = tensors[f"i{k}"].astype(np.int64), tensors[f"v{k}"]
        base = parent[name]
        if values.dtype != base.dtype or idx.size != values.size or (idx.size and idx.max() >= base.size):
            raise ValueError(f"the patch of {name!r} does not fit its parent")
        new = np.array(base, copy=True).reshape(-1)
        new[idx] = values
        out[name] = new.reshape(base.shape)
    return out
