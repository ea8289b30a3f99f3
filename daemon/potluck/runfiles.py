"""A run on disk: the signed manifest file and the genesis weights beside it.

`potluck init`, `potluck demo`, the tests and the benches create a run with :func:`write_run`; a node
reads one back with :func:`potluck.manifest.load_manifest`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from potluck.identity import NodeIdentity
from potluck.manifest import Manifest, TaskArg, create_manifest, genesis_path
from potluck.store.versions import atomic_save
from potluck.tasks import State, genesis, get_task

__all__ = ["WrittenRun", "write_run"]


@dataclass(frozen=True)
class WrittenRun:
    """What :func:`write_run` wrote: the manifest at ``path``, the genesis ``state`` at ``genesis_path``."""

    manifest: Manifest
    path: Path
    state: State
    genesis_hash: str

    @property
    def genesis_path(self) -> Path:
        return genesis_path(self.path)


def write_run(
    path: Path,
    task: str,
    *,
    creator: NodeIdentity | None = None,
    task_args: Mapping[str, TaskArg] | None = None,
    seed: int = 0,
    **rules: Any,
) -> WrittenRun:
    """Create a run of ``task``: its genesis weights (``task.init_state(seed)``) and its manifest, signed
    by ``creator`` (default: a fresh identity); write the manifest to ``path`` and the weights beside it.

    ``rules`` are the other :func:`create_manifest` arguments (round_seconds, start_time, created,
    density, values, quorum, strategy, admission, allow, ...). Raises TaskError or ManifestError before
    writing anything, FileNotFoundError when the folder of ``path`` does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():  # before the work, and safetensors would say it in its own words
        raise FileNotFoundError(2, "no such folder", str(path.parent))
    task_args = dict(task_args or {})
    state, genesis_hash = genesis(get_task(task, task_args), seed)
    manifest = create_manifest(
        creator or NodeIdentity.generate(), task, genesis_hash, task_args=task_args, seed=seed, **rules
    )
    atomic_save(state, genesis_path(path))
    manifest.save(path)
    return WrittenRun(manifest, path, state, genesis_hash)
