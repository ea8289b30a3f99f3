"""The "digits" task: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes, shipped inside
the package, so no network) and a small MLP ``64 -> hidden -> 10`` (ReLU) trained in torch on CPU.

* Held-out test split: 20% per class (stratified: 359 images), chosen by a fixed PCG64 stream that
  does not depend on the run: every keeper scores against the same images. The other 1438 are the
  training split, which :meth:`DigitsTask.local_data` shards (see potluck.tasks.data).
* Features: pixel intensities 0..16 scaled to [0, 1], float32.
* Weights: ``fc1.weight (hidden, 64)``, ``fc1.bias``, ``fc2.weight (10, hidden)``, ``fc2.bias``,
  float32, uniform in +-1/sqrt(fan_in) from PCG64(seed) (same bytes on every machine).
* Probe set (:meth:`DigitsTask.probe_set`, for a run that names one: potluck.merge.probe): ``per_class``
  images of each class of the training split, by another fixed PCG64 stream: public, disjoint from the
  held-out split (a contributor's shard may hold some of them).
* Task args: ``hidden`` (64), ``lr`` (0.05), ``batch`` (32), ``optimizer`` ("sgd" or "adam"),
  ``momentum`` (0.9, SGD only).
"""

from __future__ import annotations

import functools

import numpy as np

from potluck.merge.probe import ProbeSet
from potluck.tasks import State, TaskError, register_task
from potluck.tasks.data import LabeledData, MlpTask, check_number, uniform_init

__all__ = ["CLASSES", "FEATURES", "DigitsTask", "digits_split"]

FEATURES = 64
CLASSES = 10
TEST_FRACTION = 0.2
_SPLIT_SEED = 20240917  # fixed: the held-out split is part of the task's definition
_PROBE_SEED = 15  # fixed: so is the probe set


@functools.cache
def digits_split() -> tuple[LabeledData, LabeledData]:
    """(train, test) of the whole digits set, the test split 20% of each class (fixed)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise TaskError("the digits task needs scikit-learn (pip install scikit-learn)") from e
    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(_SPLIT_SEED))
    test = []
    for c in range(CLASSES):
        members = np.flatnonzero(y == c)
        take = round(TEST_FRACTION * members.size)
        test.append(np.sort(rng.permutation(members)[:take]))
    is_test = np.zeros(y.size, dtype=bool)
    is_test[np.concatenate(test)] = True
    train = LabeledData(np.ascontiguousarray(x[~is_test]), y[~is_test])
    held_out = LabeledData(np.ascontiguousarray(x[is_test]), y[is_test])
    return train, held_out


class DigitsTask(MlpTask):
    """A TrainableTask on sklearn's digits; see the module doc."""

    name = "digits"
    layers = ("fc1", "fc2")

    def __init__(
        self,
        hidden: int = 64,
        lr: float = 0.05,
        batch: int = 32,
        optimizer: str = "sgd",
        momentum: float = 0.9,
    ) -> None:
        self.hidden = int(check_number(hidden, "digits: hidden", integer=True, high=1 << 16))
        self.lr = float(check_number(lr, "digits: lr", high=100.0))
        self.batch = int(check_number(batch, "digits: batch", integer=True, high=1 << 16))
        if optimizer not in ("sgd", "adam"):
            raise TaskError(f"digits: optimizer must be 'sgd' or 'adam', got {optimizer!r}")
        self.optimizer = optimizer
        self.momentum = float(check_number(momentum, "digits: momentum", low=-1e-12, high=0.999))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            "fc1.weight": (self.hidden, FEATURES),
            "fc1.bias": (self.hidden,),
            "fc2.weight": (CLASSES, self.hidden),
            "fc2.bias": (CLASSES,),
        }

    def num_params(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes().values())

    def init_state(self, seed: int) -> State:
        fan_in = {
            "fc1.weight": FEATURES,
            "fc1.bias": FEATURES,
            "fc2.weight": self.hidden,
            "fc2.bias": self.hidden,
        }
        return uniform_init(seed, self.shapes(), fan_in)

    def split(self) -> tuple[LabeledData, LabeledData]:
        return digits_split()

    def probe_set(self, per_class: int) -> ProbeSet:
        """``per_class`` training images of each class (all of a class that has fewer), fixed."""
        train = digits_split()[0]
        rng = np.random.Generator(np.random.PCG64(_PROBE_SEED))
        members = [rng.permutation(np.flatnonzero(train.y == c))[:per_class] for c in range(CLASSES)]
        idx = np.sort(np.concatenate(members))
        return ProbeSet(np.ascontiguousarray(train.x[idx]), train.y[idx].astype(np.int64), CLASSES)


register_task("digits", DigitsTask)
