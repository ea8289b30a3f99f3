"""The "toy" task: the weights of a tiny 2-layer MLP, for tests and demos (no training data).

Weights are drawn uniformly from +-1/sqrt(fan_in) (PyTorch's nn.Linear default range) with numpy's
PCG64 ``Generator.random``, whose output for a seed is fixed (53 random bits per double), computed
in float64 and cast once to float32: the same seed gives the same bytes on every machine.
"""

from __future__ import annotations

import math

import numpy as np

from potluck.tasks import State, TaskError, register_task

__all__ = ["ToyTask"]

_MAX_DIM = 1 << 16


def _dim(value: object, what: str) -> int:
    if type(value) is not int or not 1 <= value <= _MAX_DIM:
        raise TaskError(f"toy: {what} must be an integer in [1, {_MAX_DIM}], got {value!r}")
    return value


class ToyTask:
    """``{"l1.weight": (hidden, inputs), "l1.bias": (hidden,), "l2.weight": (outputs, hidden),
    "l2.bias": (outputs,)}``, float32."""

    name = "toy"

    def __init__(self, inputs: int = 16, hidden: int = 32, outputs: int = 4) -> None:
        self.inputs = _dim(inputs, "inputs")
        self.hidden = _dim(hidden, "hidden")
        self.outputs = _dim(outputs, "outputs")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            "l1.weight": (self.hidden, self.inputs),
            "l1.bias": (self.hidden,),
            "l2.weight": (self.outputs, self.hidden),
            "l2.bias": (self.outputs,),
        }

    def init_state(self, seed: int) -> State:
        rng = np.random.Generator(np.random.PCG64(seed))
        state: State = {}
        for name, shape in self.shapes().items():  # fixed order: the stream is part of the format
            fan_in = self.inputs if name.startswith("l1.") else self.hidden
            bound = 1.0 / math.sqrt(fan_in)
            u = rng.random(shape)  # float64 in [0, 1)
            state[name] = ((2.0 * u - 1.0) * bound).astype(np.float32)
        return state


register_task("toy", ToyTask)
