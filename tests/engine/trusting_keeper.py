"""A keeper that audits nothing (tests only): it learns about lying reducers only from the faults
others publish. ``python -m tests.engine.trusting_keeper run ...`` takes the same arguments as ``potluck``."""

from __future__ import annotations

import potluck.engine.loop
from potluck.cli import main

potluck.engine.loop.AUDIT_SAMPLES = 0

if __name__ == "__main__":
    raise SystemExit(main())
