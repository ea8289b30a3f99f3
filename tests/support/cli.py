"""Run the `potluck` command line as a user would, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def potluck(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, check: bool = False
) -> subprocess.CompletedProcess:
    """``potluck ARGS`` (text output captured); with ``check``, an AssertionError names a failure."""
    proc = subprocess.run(
        [sys.executable, "-m", "potluck", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"potluck {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def potluck_json(*args: str) -> Any:
    """``potluck ARGS --json``, parsed; raises if the command fails."""
    return json.loads(potluck(*args, "--json", check=True).stdout)
