"""A third-party strategy for the registry tests: the first delta, scaled."""

from __future__ import annotations

from potluck.merge import Args, BaseStrategy


class FirstScaled(BaseStrategy):
    name = "first_scaled"
    kind = "coordinate"

    def configure(self, a: Args) -> None:
        self.scale = a.number("scale", 1.0)

    def merge_batch(self, batch, seed):
        return batch.matrix[0] * self.scale


def not_a_strategy(args):
    return object()


def broken(args):
    raise RuntimeError("boom")
