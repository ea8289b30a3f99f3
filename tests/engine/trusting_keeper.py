"""A keeper that audits nothing (tests only): it learns about lying reducers only from the faults
others publish. ``python -m tests.engine.trusting_keeper run ...`` takes the same arguments as ``potluck``."""

from __future__ import annotations

from potluck.cli import main
from potluck.engine import conduct


class TrustingKeeper(conduct.Conduct):
    audit_samples = 0


if __name__ == "__main__":
    conduct.install(TrustingKeeper())
    raise SystemExit(main())
