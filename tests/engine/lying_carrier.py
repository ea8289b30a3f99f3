"""A keeper that feeds the all-reduce something other than the updates it carries (tests only):
``python -m tests.engine.lying_carrier run ...`` takes the same arguments as ``potluck``."""

from __future__ import annotations

import dataclasses

from potluck.cli import main
from potluck.engine import conduct


class LyingCarrier(conduct.Conduct):
    def contribution(self, layout, carried):
        honest = super().contribution(layout, carried)
        q = honest.q.copy()
        q[::5] += 1 << 20  # a push of 2**-4 on every 5th coordinate, well inside the fixed-point range
        return dataclasses.replace(honest, q=q)


if __name__ == "__main__":
    conduct.install(LyingCarrier())
    raise SystemExit(main())
