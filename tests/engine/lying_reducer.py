"""A keeper that signs a wrong slice whenever it reduces one (tests only, never the shipped CLI):
``python -m tests.engine.lying_reducer run ...`` takes the same arguments as ``potluck``."""

from __future__ import annotations

import numpy as np

from potluck.cli import main
from potluck.engine.loop import RoundEngine

_honest = RoundEngine._reduce_slice


def _lying(recompute, lo: int, hi: int) -> np.ndarray:
    values = _honest(recompute, lo, hi)
    values[::7] += 0.25  # every 7th coordinate of its slice pushed off
    return values


RoundEngine._reduce_slice = staticmethod(_lying)

if __name__ == "__main__":
    raise SystemExit(main())
