"""Tasks: what a run trains. A task names its model and produces the genesis weights.

The minimal protocol is :class:`Task` (``name`` and a deterministic ``init_state(seed)``); tasks
that can train and evaluate also satisfy :class:`TrainableTask`, whose methods are optional for a
keeper (a node that only merges never calls them). Check with :func:`is_trainable`.

A manifest's ``task`` string is resolved by :func:`get_task`: a built-in name ("toy", and whatever
:func:`register_task` added), or ``"package.module:factory"`` where ``factory(**task_args)`` returns
a Task. The genesis version of a run is ``version_hash(task.init_state(manifest.seed))``.
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
    "genesis",
    "get_task",
    "is_trainable",
    "register_task",
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
    """A task a contributor can train (provisional: the digits task will settle the signatures).

    ``train`` starts from ``state`` (not modified), runs ``steps`` local steps and returns the new
    state and the number of training samples used (the update's ``sample_count``).
    ``evaluate`` returns a score in [0, 1] (higher is better, e.g. accuracy) on held-out data.
    """

    def train(self, state: Mapping[str, np.ndarray], *, steps: int, seed: int) -> tuple[State, int]: ...

    def evaluate(self, state: Mapping[str, np.ndarray]) -> float: ...


def is_trainable(task: Task) -> bool:
    return isinstance(task, TrainableTask)


_BUILTINS: dict[str, TaskFactory] = {}


def register_task(name: str, factory: TaskFactory) -> None:
    """Make ``name`` resolve to ``factory(**task_args)`` (built-in tasks register at import)."""
    if ":" in name or not name:
        raise ValueError(f"a built-in task name has no ':' and is not empty: {name!r}")
    _BUILTINS[name] = factory


def builtin_tasks() -> list[str]:
    _load_builtins()
    return sorted(_BUILTINS)


def _load_builtins() -> None:
    if "toy" not in _BUILTINS:
        from potluck.tasks import toy  # noqa: F401  (registers itself)


def _resolve(spec: str) -> TaskFactory:
    _load_builtins()
    if spec in _BUILTINS:
        return _BUILTINS[spec]
    if not _ENTRY_POINT.fullmatch(spec):
        raise TaskError(f"unknown task {spec!r}: use one of {sorted(_BUILTINS)} or 'package.module:factory'")
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
    from potluck.store.versions import version_hash

    state = task.init_state(seed)
    return state, version_hash(state)
