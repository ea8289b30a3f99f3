"""A polling cadence that backs off while polls find nothing new, and comes back on a change or a wake."""

from __future__ import annotations

import asyncio
import contextlib


class Cadence:
    """``base_s`` after a poll that saw a change, twice the last interval after one that did not, at
    most ``max_s``; :meth:`wake` asks for a poll now and the base cadence again."""

    def __init__(self, base_s: float, max_s: float):
        self.base_s, self.max_s = base_s, max(base_s, max_s)
        self.interval_s = base_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def take_wake(self) -> bool:
        """Whether :meth:`wake` was called since the last time this was asked."""
        woken = self._wake.is_set()
        self._wake.clear()
        return woken

    def after(self, changed: bool) -> float:
        """The interval until the next poll, after a poll that did or did not see a change."""
        self.interval_s = self.base_s if changed else min(self.interval_s * 2, self.max_s)
        return self.interval_s

    async def sleep(self, seconds: float) -> None:
        """``seconds``, or less if :meth:`wake` is called meanwhile (the wake stays set: see take_wake)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
