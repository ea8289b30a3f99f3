"""The "toy" task: a tiny 2-layer MLP and synthetic data from a fixed random teacher, for tests and
fast demos.

Weights are drawn uniformly from +-1/sqrt(fan_in) (PyTorch's nn.Linear default range) with numpy's
PCG64 ``Generator.random``, whose output for a seed is fixed (53 random bits per double), computed
in float64 and cast once to float32: the same seed gives the same bytes on every machine.

Data: inputs ~ N(0, I) in ``inputs`` dimensions, labelled by a fixed random linear teacher
(``argmax(x @ T.T)`` over ``outputs`` classes); 1024 training and 512 held-out test samples, all
drawn from fixed PCG64 streams (independent of the run seed). Shards as in potluck.tasks.data.
"""

from __future__ import annotations

import functools

import numpy as np

from potluck.tasks import State, TaskError, register_task
from potluck.tasks.data import LabeledData, MlpTask, check_number, uniform_init

__all__ = ["ToyTask"]

_MAX_DIM = 1 << 16
_TRAIN, _TEST = 1024, 512
_DATA_SEED = 7_001


def _dim(value: object, what: str) -> int:
    if type(value) is not int or not 1 <= value <= _MAX_DIM:
        raise TaskError(f"toy: {what} must be an integer in [1, {_MAX_DIM}], got {value!r}")
    return value


@functools.cache
def _teacher_data(inputs: int, outputs: int) -> tuple[LabeledData, LabeledData]:
    rng = np.random.Generator(np.random.PCG64([_DATA_SEED, inputs, outputs]))
    teacher = rng.standard_normal((outputs, inputs))
    x = rng.standard_normal((_TRAIN + _TEST, inputs))
    y = np.argmax(x @ teacher.T, axis=1).astype(np.int64)
    x = x.astype(np.float32)
    return LabeledData(x[:_TRAIN], y[:_TRAIN]), LabeledData(x[_TRAIN:], y[_TRAIN:])


class ToyTask(MlpTask):
    """``{"l1.weight": (hidden, inputs), "l1.bias": (hidden,), "l2.weight": (outputs, hidden),
    "l2.bias": (outputs,)}``, float32; trained with SGD (``lr``, ``batch``, momentum 0.9)."""

    name = "toy"
    layers = ("l1", "l2")
    momentum = 0.9

    def __init__(
        self, inputs: int = 16, hidden: int = 32, outputs: int = 4, lr: float = 0.1, batch: int = 32
    ) -> None:
        self.inputs = _dim(inputs, "inputs")
        self.hidden = _dim(hidden, "hidden")
        self.outputs = _dim(outputs, "outputs")
        self.lr = float(check_number(lr, "toy: lr", high=100.0))
        self.batch = int(check_number(batch, "toy: batch", integer=True, high=_MAX_DIM))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            "l1.weight": (self.hidden, self.inputs),
            "l1.bias": (self.hidden,),
            "l2.weight": (self.outputs, self.hidden),
            "l2.bias": (self.outputs,),
        }

    def init_state(self, seed: int) -> State:
        fan_in = {name: self.inputs if name.startswith("l1.") else self.hidden for name in self.shapes()}
        return uniform_init(seed, self.shapes(), fan_in)  # fixed order: the stream is part of the format

    def split(self) -> tuple[LabeledData, LabeledData]:
        return _teacher_data(self.inputs, self.outputs)


register_task("toy", ToyTask)
