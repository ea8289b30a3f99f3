"""A history-aware merge strategy for the tests (not shipped): ``tests.support.history_strategy:StepClip``.

Each delta is clipped to ``radius`` x the median distance around the previous merged step (round 0, or
no history: around 0), then the clipped deltas are averaged around that center. It records the context
it was given (``seen``), so the tests check what the caller passed; ``last_factors`` is each delta's
clip factor, in the order the deltas were passed (the interface a node reads to say why an update was
damped).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from potluck.merge import Args, BaseStrategy, make_batch
from potluck.merge.batch import rowsum, sqnorm
from potluck.merge.context import RoundContext


class StepClip(BaseStrategy):
    name = "step_clip"
    kind = "vector"
    history_rounds: ClassVar[int] = 1

    def configure(self, a: Args) -> None:
        self.radius = a.number("radius", 1.0, low=0.0, low_open=True)
        self.seen: list[RoundContext | None] = []
        self.last_factors: tuple[float, ...] = ()

    def merge(
        self,
        deltas: Sequence,
        weights: Sequence[float],
        *,
        round_seed: int,
        context: RoundContext | None = None,
    ) -> dict[str, np.ndarray]:
        self.seen.append(context)
        batch = make_batch(deltas, weights)
        center = np.zeros(batch.length)
        for step in context.previous[:1] if context is not None else ():
            center = _flat(batch, step)
        rows = batch.matrix - center
        dist = [math.sqrt(sqnorm(rows[i])) for i in range(batch.n)]
        tau = self.radius * sorted(dist)[(batch.n - 1) // 2]
        factors = [1.0 if d <= tau else tau / d for d in dist]
        rows = rows * np.array(factors)[:, None]
        # canonical rows back to the order the deltas were passed in, by their keys
        shapes = {slot.name: slot.shape for slot in batch.slots}
        order = [make_batch([d], [1.0], shapes=shapes).matrix[0].tobytes() for d in deltas]
        by_row = {batch.matrix[i].tobytes(): factors[i] for i in range(batch.n)}
        self.last_factors = tuple(by_row[k] for k in order)
        return batch.split(center + rowsum(rows) / batch.n)


def _flat(batch, step: Mapping[str, np.ndarray]) -> np.ndarray:
    out = np.zeros(batch.length)
    for slot in batch.slots:
        if slot.name in step:
            out[slot.offset : slot.offset + slot.size] = np.asarray(step[slot.name], np.float64).reshape(-1)
    return out


def step_clip(args: Mapping) -> StepClip:
    return StepClip(args)
