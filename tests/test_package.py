"""The root package: imports it defers until first use."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import potluck.node  # a daemon's imports: torch, hivemind and its averager
loaded = {m for m in sys.modules if m.startswith("scipy.optimize.")}
print(len(loaded))
from hivemind.averaging import load_balancing
load_balancing.scipy.optimize.linprog  # first use: the real module loads
print(len({m for m in sys.modules if m.startswith("scipy.optimize.")}) > 0)
"""


def test_a_daemon_loads_scipy_optimize_only_when_an_averager_uses_it():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "True"]
