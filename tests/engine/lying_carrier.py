"""A keeper that feeds the all-reduce something other than the updates it carries (tests only):
``python -m tests.engine.lying_carrier run ...`` takes the same arguments as ``potluck``."""

from __future__ import annotations

import dataclasses

from potluck.cli import main
from potluck.engine.loop import RoundEngine

_honest = RoundEngine._contribution


def _lying(self, weighted):
    contribution = _honest(self, weighted)
    q = contribution.q.copy()
    q[::5] += 1 << 20  # a push of 2**-4 on every 5th coordinate, well inside the fixed-point range
    return dataclasses.replace(contribution, q=q)


RoundEngine._contribution = _lying

if __name__ == "__main__":
    raise SystemExit(main())
