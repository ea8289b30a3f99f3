"""Scoring each new version on the task's held-out split, off the event loop and one at a time: the
score goes to the history row of its round and, while the version is still ours, to the status."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np

from potluck.engine.attempt import RoundStatus
from potluck.store.history import History
from potluck.tasks import TrainableTask, metric

logger = logging.getLogger(__name__)

# the engine's current version: (version hash, its tensors, the round that committed it)
Current = Callable[[], tuple[str, dict[str, np.ndarray], int]]


class Evaluator:
    def __init__(self, task: TrainableTask | None, history: History, status: RoundStatus, current: Current):
        self._task, self._history, self._status, self._current = task, history, status, current
        self._running: asyncio.Task | None = None

    def soon(self) -> None:
        """Score the current version (unless a scoring runs: it scores the newest when it ends)."""
        task = self._task
        if task is None or (self._running is not None and not self._running.done()):
            return
        version, state, round_ = self._current()

        async def evaluate() -> None:
            try:
                accuracy = float(await asyncio.to_thread(task.evaluate, state))
            except Exception as e:  # a task bug must not take the node down
                logger.warning(f"evaluating {version[:12]} failed: {type(e).__name__}: {e}")
                return
            if round_ >= 0:
                await asyncio.to_thread(self._history.set_accuracy, round_, accuracy)
            now = self._current()[0]
            if now == version:
                self._status.accuracy = accuracy
            logger.info(f"version {version[:12]} (round {round_}): held-out {metric(task)[0]} {accuracy:.4f}")
            if now != version:
                self.soon()  # a newer version arrived meanwhile

        self._running = asyncio.create_task(evaluate(), name="evaluate")

    async def stop(self) -> None:
        if self._running is not None:
            self._running.cancel()
            await asyncio.gather(self._running, return_exceptions=True)
