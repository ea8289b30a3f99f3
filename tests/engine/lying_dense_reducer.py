"""A keeper that signs a wrong dense sum whenever it reduces a range of a dense round (tests only, never
the shipped CLI): ``python -m tests.engine.lying_dense_reducer run ...`` takes the same arguments as
``potluck``."""

from __future__ import annotations

from potluck.cli import main
from potluck.engine import conduct


class LyingDenseReducer(conduct.Conduct):
    def dense_range(self, summed):
        summed = summed.copy()
        summed[::7] += 3  # every 7th coordinate of its merged range pushed off
        return summed


if __name__ == "__main__":
    conduct.install(LyingDenseReducer())
    raise SystemExit(main())
