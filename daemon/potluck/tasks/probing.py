"""The probe set a run names (issue 15), as the task hands it: the bytes checked against the manifest's
hash before a node, `potluck verify` or `potluck blame` merges with them.

A task hands a probe set with ``probe_set(per_class) -> ProbeSet`` (the digits task does:
potluck.tasks.digits) and names its model's layers in ``layers`` (the MLP potluck.merge.probe scores).
"""

from __future__ import annotations

from potluck.manifest import Manifest
from potluck.merge.probe import ProbeError, ProbeRule, ProbeSet
from potluck.tasks import Task, TaskError, get_task

__all__ = ["probe_digest", "run_probe", "task_probe_set"]


def task_probe_set(task: Task, name: str, per_class: int) -> ProbeSet:
    """The probe set ``task`` (named ``name``) hands; :class:`ProbeError` when it hands none."""
    hand = getattr(task, "probe_set", None)
    if not callable(hand) or not getattr(task, "layers", None):
        raise ProbeError(f"task {name!r} hands no probe set (only an MLP task with probe_set() can: digits)")
    probe = hand(per_class)
    if not isinstance(probe, ProbeSet):
        raise ProbeError(f"task {name!r}: probe_set() returned {type(probe).__name__}, not a ProbeSet")
    return probe


def probe_digest(task: str, task_args: dict, per_class: int) -> str:
    """The hash `potluck init --probe` writes: that of the set the task hands."""
    return task_probe_set(get_task(task, task_args), task, per_class).digest()


def run_probe(manifest: Manifest) -> ProbeRule | None:
    """The run's probe rule (None: the run names no probe set). :class:`ProbeError` in one line when
    the task hands no set, or bytes that do not hash to the manifest's ``probe.set``."""
    if not manifest.probe:
        return None
    try:
        task = get_task(manifest.task, manifest.task_args)
    except TaskError as e:
        raise ProbeError(f"the run's probe set: {e}") from None
    probe = task_probe_set(task, manifest.task, int(manifest.probe["per_class"]))
    got, named = probe.digest(), str(manifest.probe["set"])
    if got != named:
        raise ProbeError(
            f"the probe set task {manifest.task!r} hands here hashes to {got[:16]}, the run names "
            f"{named[:16]}: this install's task data differs from the run creator's (another potluck or "
            "scikit-learn version?)"
        )
    layers = tuple(getattr(task, "layers"))  # noqa: B009 (not part of the Task protocol: checked above)
    p = manifest.probe
    decay, strict = float(p.get("record", 0.0)), float(p.get("strict", 1.0))
    return ProbeRule(probe, layers, float(p["frac"]), float(p["floor"]), decay, strict)
