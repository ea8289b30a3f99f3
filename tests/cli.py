"""Run the `potluck` command line as a user would, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def potluck_json(*args: str) -> Any:
    """``potluck ARGS --json``, parsed; raises if the command fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "potluck", *args, "--json"], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)
