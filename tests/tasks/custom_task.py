"""A third-party task, as a user would ship it: ``--task tests.tasks.custom_task:make``.

Logistic regression (numpy only, no torch) on two Gaussian blobs; it reuses potluck's shard helper.
"""

import numpy as np

from potluck.tasks import TaskError
from potluck.tasks.data import shard_indices


class Blobs:
    name = "blobs"

    def __init__(self, dim: int = 4, lr: float = 0.5) -> None:
        if type(dim) is not int or dim < 1:
            raise TaskError(f"blobs: dim must be a positive integer, got {dim!r}")
        self.dim, self.lr = dim, lr
        rng = np.random.default_rng(123)
        y = rng.integers(0, 2, 600)
        x = rng.standard_normal((600, dim)) + (2 * y[:, None] - 1) * 1.0
        self.train_xy = (x[:400].astype(np.float32), y[:400])
        self.test_xy = (x[400:].astype(np.float32), y[400:])

    def init_state(self, seed):
        rng = np.random.default_rng(seed)
        return {"w": (0.01 * rng.standard_normal(self.dim)).astype(np.float32), "b": np.zeros(1, np.float32)}

    def local_data(self, shard=None, seed=0):
        x, y = self.train_xy
        idx = shard_indices(y, shard, seed)
        return x[idx], y[idx]

    def train(self, state, data, *, steps, seed, progress=None):
        x, y = data
        w, b = state["w"].astype(np.float64), float(state["b"][0])
        rng = np.random.default_rng(seed)
        for step in range(steps):
            i = rng.integers(0, len(y), 16)
            p = 1 / (1 + np.exp(-(x[i] @ w + b)))
            w -= self.lr * (x[i].T @ (p - y[i])) / 16
            b -= self.lr * float(np.mean(p - y[i]))
            if progress:
                progress(step + 1)
        return {"w": w.astype(np.float32), "b": np.array([b], np.float32)}, min(16 * steps, len(y))

    def evaluate(self, state):
        x, y = self.test_xy
        return float(np.mean(((x @ state["w"] + state["b"][0]) > 0) == y))


def make(dim: int = 4, lr: float = 0.5) -> Blobs:
    return Blobs(dim, lr)
