"""Labelled data, shard specs, and the small-MLP trainer and task shell shared by the built-in tasks.

Shard specs (the ``shard`` of :meth:`TrainableTask.local_data`), always over the task's *training*
split (the held-out test split is never sharded):

``None``
    All training data.
``"I/N"``
    The I-th (0-based, ``0 <= I < N``) of N **pathological non-IID** shards, McMahan et al.'s
    "2 shards per client" split: the training set is sorted by label (ties in a seeded random
    order) and cut into 2N contiguous, near-equal chunks; shard I gets chunks I and I + N. Each
    shard thus holds two far-apart stretches of the label order, i.e. about 2 labels (up to 4 where
    a chunk straddles a label boundary), and the N shards are disjoint and together complete.
``"dirichlet:ALPHA:I/N"``
    For every label, its samples (seeded random order) are split among the N shards in proportions
    drawn from Dirichlet(ALPHA, ..., ALPHA) (Hsu et al. 2019): small ALPHA (0.1) is very skewed,
    large ALPHA (100) nearly IID. Disjoint and complete too. The draw is repeated (same seeded
    stream) until every shard holds at least ``min(10, n // N)`` samples.

The partition depends only on the labels, the spec and the ``seed`` given to :func:`shard_indices`.
The built-in tasks always pass :data:`PARTITION_SEED` (a constant), not the contributor's seed:
contributors started with different ``--seed`` values still get disjoint shards of one fixed
partition. A malformed spec raises :class:`~potluck.tasks.TaskError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from potluck.tasks import State, TaskError

if TYPE_CHECKING:
    import torch

__all__ = [
    "PARTITION_SEED",
    "LabeledData",
    "MlpTask",
    "OneThread",
    "ShardSpec",
    "check_number",
    "check_training",
    "evaluate_mlp",
    "parse_shard",
    "shard_indices",
    "train_mlp",
    "uniform_init",
]

_SHARD = re.compile(r"(\d{1,9})/(\d{1,9})")
_DIRICHLET = re.compile(r"dirichlet:([^:]+):(\d{1,9})/(\d{1,9})")
_DIRICHLET_TRIES = 1000
PARTITION_SEED = 0  # the built-in tasks' shards: one fixed partition, whoever asks


@dataclass(frozen=True)
class ShardSpec:
    index: int  # I, 0-based
    count: int  # N
    alpha: float | None = None  # Dirichlet concentration; None: the label-sorted "I/N" split


@dataclass(frozen=True)
class LabeledData:
    """A contributor's local data: float32 features ``x`` (n, d) and int64 labels ``y`` (n,)."""

    x: np.ndarray
    y: np.ndarray
    shard: str | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def label_counts(self, classes: int) -> np.ndarray:
        return np.bincount(self.y, minlength=classes)


def parse_shard(spec: str | None) -> ShardSpec | None:
    """``None`` (all data) or the parsed spec; :class:`TaskError` with the accepted forms otherwise."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise TaskError(f"a shard spec is a string or None, got {type(spec).__name__}")
    alpha: float | None = None
    if m := _SHARD.fullmatch(spec):
        i, n = int(m[1]), int(m[2])
    elif m := _DIRICHLET.fullmatch(spec):
        try:
            alpha = float(m[1])
        except ValueError:
            alpha = math.nan
        if not math.isfinite(alpha) or alpha <= 0:
            raise TaskError(f"shard {spec!r}: the Dirichlet ALPHA must be a positive number, got {m[1]!r}")
        i, n = int(m[2]), int(m[3])
    else:
        raise TaskError(
            f"bad shard spec {spec!r}: use 'I/N' (0 <= I < N, label-sorted non-IID split) or "
            "'dirichlet:ALPHA:I/N' (ALPHA > 0), or no shard for all the data"
        )
    if not 0 <= i < n:
        raise TaskError(f"shard {spec!r}: need 0 <= I < N (shards are numbered from 0), got I={i}, N={n}")
    return ShardSpec(i, n, alpha)


def shard_indices(labels: np.ndarray, spec: str | ShardSpec | None, seed: int = PARTITION_SEED) -> np.ndarray:
    """Sorted indices into ``labels`` of the samples in shard ``spec`` (see the module doc)."""
    y = np.asarray(labels)
    n = int(y.size)
    parsed = spec if isinstance(spec, ShardSpec) or spec is None else parse_shard(spec)
    if parsed is None:
        return np.arange(n, dtype=np.int64)
    if type(seed) is not int or seed < 0:
        raise TaskError(f"a shard seed is a non-negative integer, got {seed!r}")
    if parsed.alpha is None:
        if 2 * parsed.count > n:
            raise TaskError(
                f"{parsed.count} label-sorted shards need >= {2 * parsed.count} samples, have {n}"
            )
        rng = np.random.Generator(np.random.PCG64([seed, 1]))
        order = rng.permutation(n)
        order = order[np.argsort(y[order], kind="stable")]  # by label, ties in seeded random order
        bounds = np.linspace(0, n, 2 * parsed.count + 1).round().astype(np.int64)
        i, count = parsed.index, parsed.count
        chunks = (order[bounds[i] : bounds[i + 1]], order[bounds[i + count] : bounds[i + count + 1]])
        return np.sort(np.concatenate(chunks)).astype(np.int64)
    return _dirichlet(y, parsed, seed)


def _dirichlet(y: np.ndarray, spec: ShardSpec, seed: int) -> np.ndarray:
    n, count = int(y.size), spec.count
    min_size = min(10, n // count)
    if min_size < 1:
        raise TaskError(f"{count} Dirichlet shards need >= {count} samples, have {n}")
    rng = np.random.Generator(np.random.PCG64([seed, 2]))
    classes = np.unique(y)
    for _ in range(_DIRICHLET_TRIES):
        owner = np.empty(n, dtype=np.int64)
        for c in classes:
            members = np.flatnonzero(y == c)
            members = members[rng.permutation(members.size)]
            p = rng.dirichlet(np.full(count, spec.alpha))
            cuts = (np.cumsum(p)[:-1] * members.size).round().astype(np.int64)
            for shard, part in enumerate(np.split(members, cuts)):
                owner[part] = shard
        if np.bincount(owner, minlength=count).min() >= min_size:
            return np.flatnonzero(owner == spec.index).astype(np.int64)
    raise TaskError(
        f"dirichlet:{spec.alpha}: no draw in {_DIRICHLET_TRIES} gave every one of the {count} shards "
        f">= {min_size} samples; use a larger ALPHA or fewer shards"
    )


# ------------------------------------------------------------------------------------------ models


def check_number(
    value: object, what: str, *, integer: bool = False, low: float = 0.0, high: float = math.inf
) -> int | float:
    """A task argument: an int (or, unless ``integer``, a float) in ``(low, high]``; TaskError otherwise."""
    ok_types = (int,) if integer else (int, float)
    if type(value) not in ok_types or not math.isfinite(value) or not low < value <= high:
        kind = "an integer" if integer else "a number"
        raise TaskError(f"{what} must be {kind} in ({low}, {high}], got {value!r}")
    return value


def check_training(steps: object, seed: object) -> None:
    """``train``'s ``steps`` and ``seed``: non-negative integers; TaskError otherwise."""
    if type(steps) is not int or steps < 0:
        raise TaskError(f"steps must be a non-negative integer, got {steps!r}")
    if type(seed) is not int or seed < 0:
        raise TaskError(f"a training seed is a non-negative integer, got {seed!r}")


def uniform_init(seed: int, shapes: Mapping[str, tuple[int, ...]], fan_in: Mapping[str, int]) -> State:
    """Each tensor uniform in +-1/sqrt(fan_in) (nn.Linear's range) from one PCG64 stream, in the
    order of ``shapes``: float64 ``Generator.random``, cast once to float32 (same bytes everywhere)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    state: State = {}
    for name, shape in shapes.items():
        bound = 1.0 / math.sqrt(fan_in[name])
        state[name] = ((2.0 * rng.random(shape) - 1.0) * bound).astype(np.float32)
    return state


def _forward(params: Mapping[str, torch.Tensor], layers: Sequence[str], x: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    for j, layer in enumerate(layers):
        x = F.linear(x, params[f"{layer}.weight"], params[f"{layer}.bias"])
        if j + 1 < len(layers):
            x = F.relu(x)
    return x


class OneThread:
    """torch on one thread inside (restored after): polite on small machines, and deterministic."""

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.before)


def train_mlp(
    state: Mapping[str, np.ndarray],
    data: LabeledData,
    *,
    layers: Sequence[str],
    steps: int,
    seed: int,
    batch: int,
    lr: float,
    optimizer: str = "sgd",
    momentum: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> tuple[State, int]:
    """``steps`` minibatch steps of cross-entropy on an MLP (ReLU between ``layers``) from ``state``.

    Batches walk through seeded random permutations of ``data`` (epoch after epoch). Returns the
    new float32 state (same names; ``state`` is not modified) and the number of distinct samples
    the steps touched, ``min(steps * batch, len(data))``. Deterministic for a given ``seed``.
    """
    import torch  # here: only training needs it (~143 MB a process), a keeper that scores does not
    import torch.nn.functional as F

    check_training(steps, seed)
    n = len(data)
    if n == 0:
        raise TaskError("no training data in this shard")
    names = [f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")]
    with OneThread():
        params = {k: torch.tensor(np.asarray(state[k], dtype=np.float32)).requires_grad_() for k in names}
        if optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(params.values(), lr=lr)
        else:
            opt = torch.optim.SGD(params.values(), lr=lr, momentum=momentum)
        x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
        rng = np.random.Generator(np.random.PCG64([seed, 3]))
        stream, pos = np.zeros(0, np.int64), 0
        for step in range(steps):
            while stream.size - pos < batch:  # append another epoch's permutation
                stream, pos = np.concatenate([stream[pos:], rng.permutation(n)]), 0
            idx = torch.from_numpy(stream[pos : pos + batch])
            pos += batch
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(_forward(params, layers, x[idx]), y[idx])
            loss.backward()
            opt.step()
            if progress is not None:
                progress(step + 1)
        out = {k: p.detach().numpy() for k, p in params.items()}  # views: the tensors are ours alone
    return out, min(steps * batch, n)


def evaluate_mlp(state: Mapping[str, np.ndarray], data: LabeledData, *, layers: Sequence[str]) -> float:
    """Accuracy (fraction correct, in [0, 1]) of the MLP ``state`` on ``data``: the forward pass of
    :func:`train_mlp`'s model (float32, ReLU between ``layers``) in numpy, so that a keeper, which
    scores every version but trains nothing, does not load torch for it."""
    if len(data) == 0:
        return 0.0
    x = np.asarray(data.x, dtype=np.float32)
    for j, layer in enumerate(layers):
        w = np.asarray(state[f"{layer}.weight"], dtype=np.float32)
        x = x @ w.T + np.asarray(state[f"{layer}.bias"], dtype=np.float32)
        if j + 1 < len(layers):
            x = np.maximum(x, 0.0)
    return float(np.mean(x.argmax(axis=1) == np.asarray(data.y)))


class MlpTask:
    """What the built-in tasks share: an MLP over ``layers`` (ReLU between) trained with
    :func:`train_mlp` on shards of the task's fixed training split and scored on its test split.
    A subclass names its layers and hyperparameters and gives :meth:`split`."""

    layers: tuple[str, ...]
    batch: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.0

    def split(self) -> tuple[LabeledData, LabeledData]:
        """(train, test) of the whole data set, the same on every machine."""
        raise NotImplementedError

    def local_data(self, shard: str | None = None, seed: int = 0) -> LabeledData:
        """The training samples of ``shard``; ``seed`` is ignored: the partition is fixed."""
        train, _ = self.split()
        idx = shard_indices(train.y, shard, PARTITION_SEED)
        return LabeledData(train.x[idx], train.y[idx], shard)

    def test_data(self) -> LabeledData:
        return self.split()[1]

    def train(
        self,
        state: Mapping[str, np.ndarray],
        data: LabeledData,
        *,
        steps: int,
        seed: int,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[State, int]:
        return train_mlp(
            state, data, layers=self.layers, steps=steps, seed=seed, batch=self.batch, lr=self.lr,
            optimizer=self.optimizer, momentum=self.momentum, progress=progress,
        )  # fmt: skip

    def evaluate(self, state: Mapping[str, np.ndarray]) -> float:
        return evaluate_mlp(state, self.test_data(), layers=self.layers)
