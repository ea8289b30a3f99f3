"""The JSON report every code-tree benchmark prints (bench/README.md): config, machine, results, wall time."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def emit(
    benchmark: str, args: argparse.Namespace, results: dict[str, Any], started: float, **config: Any
) -> None:
    """Print the report on stdout (and write it to ``args.out`` when given); ``config`` adds to the flags."""
    report = {
        "benchmark": benchmark,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | config,
        "machine": {"python": platform.python_version(), "cpu": platform.machine(), "cores": os.cpu_count()},
        "results": results,
        "wall_s": round(time.time() - started, 1),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
