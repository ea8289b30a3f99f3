"""A keeper that signs a wrong slice whenever it reduces one (tests only, never the shipped CLI):
``python -m tests.engine.lying_reducer run ...`` takes the same arguments as ``potluck``."""

from __future__ import annotations

from potluck.cli import main
from potluck.engine import conduct


class LyingReducer(conduct.Conduct):
    def reduce_slice(self, recompute, lo: int, hi: int):
        values = super().reduce_slice(recompute, lo, hi)
        values[::7] += 0.25  # every 7th coordinate of its slice pushed off
        return values


if __name__ == "__main__":
    conduct.install(LyingReducer())
    raise SystemExit(main())
