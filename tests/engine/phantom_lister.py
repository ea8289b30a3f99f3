"""A keeper whose round entries list an update nobody can fetch (tests only, never the shipped CLI):
``python -m tests.engine.phantom_lister run ...`` takes the same arguments as ``potluck``."""

from __future__ import annotations

import hashlib

from potluck.cli import main
from potluck.engine.loop import RoundEngine

_honest = RoundEngine._held_ids


def _with_phantom(self, r: int) -> list[str]:
    return sorted([*_honest(self, r), hashlib.sha256(f"phantom {r}".encode()).hexdigest()])


RoundEngine._held_ids = _with_phantom

if __name__ == "__main__":
    raise SystemExit(main())
