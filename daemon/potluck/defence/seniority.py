"""Probation as this node counts it: who is past probation by its own committed history (the rules
are in potluck.defence.probation; the round entries make every participant agree on them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from potluck.defence import probation
from potluck.manifest import Manifest
from potluck.store.history import History


class Seniority:
    def __init__(self, manifest: Manifest | None):
        self.rounds = manifest.probation_rounds if manifest is not None else 0  # N; 0 = off
        self.history: History | None = None  # set by the node once the run's history is open
        self._cache: tuple[Any, Counter[str]] | None = None

    def contributions(self) -> Counter[str]:
        """node id -> committed rounds in this node's history that list it as a contributor."""
        if self.history is None:
            return Counter()
        latest = self.history.latest()
        key = latest.id if latest is not None else None
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, probation.contributions(self.history.log()))
        return self._cache[1]

    def rounds_left(self, node_id: str) -> int:
        """Committed rounds ``node_id`` still has to contribute to before its updates weigh anything."""
        return probation.rounds_left(self.contributions().get(node_id, 0), self.rounds) if self.rounds else 0

    def senior_bits(self, authors: Iterable[str | None]) -> bytes:
        """An entry's ``senior`` bitmap over its updates' authors (node ids; None: author unknown)."""
        if self.rounds == 0:
            return b""
        counts = self.contributions()
        return probation.pack_bits(
            a is not None and probation.is_senior(counts.get(a, 0), self.rounds) for a in authors
        )

    def on_probation(self, known: Iterable[str]) -> dict[str, int]:
        """node id -> rounds left, for the authors in this node's history or ``known`` still on probation."""
        if self.rounds == 0:
            return {}
        counts = self.contributions()
        out = {
            a: probation.rounds_left(counts.get(a, 0), self.rounds) for a in sorted(set(counts) | set(known))
        }
        return {a: left for a, left in out.items() if left > 0}
