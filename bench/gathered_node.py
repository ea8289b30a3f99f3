"""A keeper that merges coordinate strategies whole on every node (the gathered path), the baseline of
bench/sliced.py: ``python -m bench.gathered_node run ...`` takes the same arguments as ``potluck``."""

from __future__ import annotations

import potluck.engine.loop
from potluck.cli import main

potluck.engine.loop.supports_columns = lambda strategy: False

if __name__ == "__main__":
    raise SystemExit(main())
