"""Byzantine contributors for bench/robust.py and the strategy tests: how attackers shape the deltas
they send.

Not shipped (potluck.merge only defends), and not in tests/ (the benches import nothing from there):
bench scripts import it as ``attacks`` (their own folder is on the path), tests as ``bench.attacks``.
Deltas here are dense ``{name: float array}``; the bench sends what these return through the real
codec (top-k, int8, signed).

* ``sign_flip``: the attacker's honest delta times ``-scale`` (x1000).
* ``random_direction``: Gaussian values on the same support, rescaled to ``scale`` times the honest
  delta's L2 norm (norm-matched x1000).
* ``flip_labels``: the attacker trains on labels ``y -> classes - 1 - y`` (label flip).
* ``ipm``: inner product manipulation (Xie et al. 2020), omniscient: ``-eps`` times the mean of
  the honest deltas of the round (eps 0.1: a small push against the honest direction that stays
  inside the honest spread; eps 100: a large one).
* ``Replay``: sends the first delta it ever produced again, every round (stale, re-signed on the
  current version, so only its content is old).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from potluck.tasks.data import LabeledData

__all__ = ["ATTACKS", "Replay", "flip_labels", "ipm", "norm", "random_direction", "sign_flip"]

ATTACKS = ("none", "sign_flip", "random", "label_flip", "ipm_0.1", "ipm_100", "replay")

Delta = Mapping[str, np.ndarray]


def norm(delta: Delta) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in delta.values()))


def sign_flip(delta: Delta, scale: float = 1000.0) -> dict[str, np.ndarray]:
    return {k: (-scale * np.asarray(v, np.float64)).astype(np.float32) for k, v in delta.items()}


def random_direction(delta: Delta, seed: int, scale: float = 1000.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k in sorted(delta):
        v = np.asarray(delta[k])
        r = rng.standard_normal(v.shape)
        out[k] = np.where(v != 0, r, 0.0) if np.count_nonzero(v) else r
    factor = scale * norm(delta) / max(norm(out), 1e-30)
    return {k: (v * factor).astype(np.float32) for k, v in out.items()}


def flip_labels(data: LabeledData, classes: int = 10) -> LabeledData:
    return LabeledData(data.x, (classes - 1 - data.y).astype(np.int64), data.shard)


def ipm(honest: Sequence[Delta], eps: float) -> dict[str, np.ndarray]:
    out = {}
    for k in sorted(honest[0]):
        acc = np.zeros(np.shape(honest[0][k]), np.float64)
        for d in honest:
            acc += np.asarray(d[k], np.float64)
        out[k] = (-eps * acc / len(honest)).astype(np.float32)
    return out


class Replay:
    """Remembers the first delta it is shown and returns it ever after."""

    def __init__(self) -> None:
        self.first: dict[str, np.ndarray] | None = None

    def __call__(self, delta: Delta) -> dict[str, np.ndarray]:
        if self.first is None:
            self.first = {k: np.array(v, np.float32) for k, v in delta.items()}
        return {k: v.copy() for k, v in self.first.items()}
