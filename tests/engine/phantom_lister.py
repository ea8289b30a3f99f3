"""A keeper whose round entries list an update nobody can fetch (tests only, never the shipped CLI):
``python -m tests.engine.phantom_lister run ...`` takes the same arguments as ``potluck``."""

from __future__ import annotations

import hashlib

from potluck.cli import main
from potluck.engine import conduct


class PhantomLister(conduct.Conduct):
    def entry_ids(self, round_: int, held: list[str]) -> list[str]:
        return sorted(
            [*super().entry_ids(round_, held), hashlib.sha256(f"phantom {round_}".encode()).hexdigest()]
        )


if __name__ == "__main__":
    conduct.install(PhantomLister())
    raise SystemExit(main())
