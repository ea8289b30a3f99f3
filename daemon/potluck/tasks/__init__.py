"""Tasks: what a run trains. A task names its model and produces the genesis weights.

The minimal protocol is :class:`Task` (``name`` and a deterministic ``init_state(seed)``); tasks
that can train and evaluate also satisfy :class:`TrainableTask` (``local_data``, ``train``,
``evaluate``), whose methods are optional for a keeper that only merges. Check with
:func:`is_trainable`.

A manifest's ``task`` string is resolved by :func:`get_task`: a built-in name ("toy", and whatever
:func:`register_task` added), or ``"package.module:factory"`` where ``factory(**task_args)`` returns
a Task. The built-in tasks are "toy" (synthetic teacher data, for tests and demos), "digits"
(scikit-learn's 8x8 digits, a small MLP; :mod:`potluck.tasks.digits`) and "lm" (a byte-level
transformer on a shipped text corpus; :mod:`potluck.tasks.lm`). The genesis version of a
run is ``version_hash(task.init_state(manifest.seed))``, or that of a pre-trained state
(:func:`pretrain`, `potluck pretrain`) given to `potluck init --genesis`, which
:func:`check_genesis` holds to the task's model.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "State",
    "Task",
    "TaskError",
    "TrainableTask",
    "builtin_tasks",
    "check_genesis",
    "genesis",
    "get_task",
    "is_trainable",
    "metric",
    "pretrain",
    "register_task",
    "scores",
]

State = dict[str, np.ndarray]
TaskFactory = Callable[..., "Task"]
_ENTRY_POINT = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class TaskError(ValueError):
    """A task spec that cannot be resolved, or a factory that fails or returns no Task."""


@runtime_checkable
class Task(Protocol):
    """What every node needs from a task: the model's genesis weights."""

    name: str

    def init_state(self, seed: int) -> State:
        """The genesis weights: the same bytes for the same seed on every machine."""
        ...


@runtime_checkable
class TrainableTask(Task, Protocol):
    """A task a contributor can train and a keeper can score.

    A contributor process calls ``data = task.local_data(shard, seed)`` once, then per round
    ``new_state, samples = task.train(state, data, steps=K, seed=s, progress=callback)``:

    * ``local_data(shard, seed)``: this contributor's training data. ``shard`` is ``None`` (all
      training data), ``"I/N"`` (the I-th, 0-based, of N label-sorted non-IID shards, ~2 labels
      each) or ``"dirichlet:ALPHA:I/N"`` (label proportions from Dirichlet(ALPHA)); see
      :mod:`potluck.tasks.data`. The partition itself is fixed by the task (not by ``seed``), so
      contributors with different seeds hold disjoint shards; ``seed`` is for tasks whose local
      data is itself sampled (the built-in ones ignore it). A bad spec raises :class:`TaskError`.
      The returned object is opaque to the caller: it is only handed back to ``train``.
    * ``train(state, data, *, steps, seed, progress=None)``: ``steps`` local optimizer steps from
      ``state`` (not modified); returns the new state (same names, shapes and dtypes) and the
      number of training samples behind it (the update's ``sample_count``, i.e. its merge weight
      before the run's cap). Deterministic given ``(state, data, steps, seed)``. ``progress``, if
      given, is called as ``progress(steps_done)`` after every step (1 .. steps). A task may also
      take ``optimizer=``, a dict the caller keeps between calls, to continue its optimizer's state
      across them (the contributor passes one when ``train`` has that parameter).
    * ``evaluate(state)``: a score on the task's fixed held-out test split (the same on every
      machine, never part of any shard): accuracy in [0, 1], higher is better, unless the task
      names another metric (see :func:`metric`; the lm task's is bits per byte, lower is better).
      The node stores it in its history's ``accuracy`` field whatever its name.
    """

    def local_data(self, shard: str | None = None, seed: int = 0) -> Any: ...

    def train(
        self,
        state: Mapping[str, np.ndarray],
        data: Any,
        *,
        steps: int,
        seed: int,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[State, int]: ...

    def evaluate(self, state: Mapping[str, np.ndarray]) -> float: ...


def is_trainable(task: Task) -> bool:
    return isinstance(task, TrainableTask)


def metric(task: Task) -> tuple[str, bool]:
    """What ``task.evaluate`` returns: its name and whether higher is better. A task says so with
    ``metric`` and ``higher_is_better`` attributes (the lm task: ``"bpb"``, lower is better);
    without them it is ``("accuracy", True)``."""
    return str(getattr(task, "metric", "accuracy")), bool(getattr(task, "higher_is_better", True))


_BUILTINS: dict[str, TaskFactory] = {}


def register_task(name: str, factory: TaskFactory) -> None:
    """Make ``name`` resolve to ``factory(**task_args)`` (built-in tasks register at import)."""
    if ":" in name or not name:
        raise ValueError(f"a built-in task name has no ':' and is not empty: {name!r}")
    _BUILTINS[name] = factory


# the built-in tasks' modules (each registers itself at import), imported only when named: the ones
# that train import torch (~143 MB a process), which a node that never touches that task does not need
_BUILTIN_MODULES = {"toy": "potluck.tasks.toy", "digits": "potluck.tasks.digits", "lm": "potluck.tasks.lm"}


def builtin_tasks() -> list[str]:
    for name in _BUILTIN_MODULES:
        _load_builtin(name)
    return sorted(_BUILTINS)


def _load_builtin(name: str) -> None:
    if name in _BUILTIN_MODULES and name not in _BUILTINS:
        importlib.import_module(_BUILTIN_MODULES[name])


def _resolve(spec: str) -> TaskFactory:
    _load_builtin(spec)
    if spec in _BUILTINS:
        return _BUILTINS[spec]
    if not _ENTRY_POINT.fullmatch(spec):
        raise TaskError(f"unknown task {spec!r}: use one of {builtin_tasks()} or 'package.module:factory'")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or anything the module raises at import
        raise TaskError(f"task {spec!r}: cannot import {module_name}: {type(e).__name__}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"task {spec!r}: {module_name} has no callable {attr!r}")
    return factory


def get_task(spec: str, args: Mapping[str, Any] | None = None) -> Task:
    """Resolve a manifest's ``task`` and ``task_args`` to a Task; :class:`TaskError` on any failure."""
    if not isinstance(spec, str):
        raise TaskError(f"a task spec is a string, got {type(spec).__name__}")
    factory = _resolve(spec)
    try:
        task = factory(**dict(args or {}))
    except TaskError:
        raise
    except Exception as e:
        raise TaskError(f"task {spec!r} with args {dict(args or {})}: {type(e).__name__}: {e}") from e
    if not isinstance(task, Task):
        raise TaskError(f"task {spec!r}: the factory returned {type(task).__name__}, not a Task")
    return task


def genesis(task: Task, seed: int) -> tuple[State, str]:
    """The genesis state of ``task`` and its version hash."""
    from potluck.hashing import version_hash

    state = task.init_state(seed)
    return state, version_hash(state)


def check_genesis(task: Task, state: Mapping[str, np.ndarray], seed: int = 0) -> None:
    """Hold a given genesis ``state`` to the model ``task.init_state(seed)`` builds: the same tensor names,
    shapes and dtypes, and finite values. :class:`TaskError` names the first mismatch (by name)."""
    model = task.init_state(seed)
    what = f"task {task.name}'s model"
    for name in sorted(set(model) | set(state)):
        if name not in state:
            raise TaskError(
                f"the genesis lacks tensor {name!r} of {what} ({len(state)} vs {len(model)} tensors)"
            )
        if name not in model:
            raise TaskError(f"the genesis has tensor {name!r}, which {what} lacks")
        given, want = np.asarray(state[name]), model[name]
        if given.shape != want.shape:
            raise TaskError(f"genesis tensor {name!r} has shape {given.shape}; {what} has {want.shape}")
        if given.dtype != want.dtype:
            raise TaskError(f"genesis tensor {name!r} is {given.dtype}; {what}'s is {want.dtype}")
        if given.dtype.kind == "f" and not np.isfinite(given).all():
            raise TaskError(f"genesis tensor {name!r} holds a NaN or an infinity")


def pretrain(
    task: TrainableTask, *, steps: int, seed: int = 0, progress: Callable[[int], None] | None = None
) -> State:
    """A pre-trained base for a run: ``steps`` training steps from ``init_state(seed)`` on the task's
    whole training data (``local_data(None)``: every shard, never the held-out split). Deterministic."""
    return task.train(task.init_state(seed), task.local_data(None, seed), steps=steps, seed=seed,
                      progress=progress)[0]  # fmt: skip


def scores(task: TrainableTask, state: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Held-out scores of ``state``: per part when the task has ``evaluate_domains`` (the lm task: BPB
    per domain and ``"overall"``), else ``{"overall": task.evaluate(state)}``."""
    per_part = getattr(task, "evaluate_domains", None)
    return dict(per_part(state)) if callable(per_part) else {"overall": float(task.evaluate(state))}
