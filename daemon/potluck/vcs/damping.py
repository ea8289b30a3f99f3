"""Why a committed round counted an update less than the others: the factors its strategy reported.

A strategy that says how much it scaled each update (``last_factors``: rounds/merging.py ``damping``) has
those below 1 kept by the node that merged and committed the round, as ``<data-dir>/damping/<version>.json``
(``{update id: factor}``, 0: dropped), written after the commit. `potluck show` reads them; a node that
caught up to the version instead of merging it has none, and neither has a strategy that does not say.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from potluck.atomic import atomic_write_bytes

__all__ = ["read", "write"]

DIR = "damping"


def _path(data_dir: Path, version: str) -> Path:
    if len(version) != 64 or version.strip("0123456789abcdef"):
        raise ValueError(f"not a version hash: {version!r}")
    return Path(data_dir) / DIR / f"{version}.json"


def write(data_dir: Path, version: str, factors: Mapping[str, float]) -> None:
    path = _path(data_dir, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(dict(sorted(factors.items()))).encode())


def read(data_dir: Path, version: str) -> dict[str, float]:
    """The factors kept for ``version`` ({}: none kept, or a file that is not such a mapping)."""
    try:
        data = json.loads(_path(data_dir, version).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: float(v) for k, v in data.items()
        if isinstance(k, str) and isinstance(v, int | float) and math.isfinite(v)
    }  # fmt: skip
