"""A run on disk: the signed manifest as a TOML file, and the genesis weights beside it.

The TOML file has flat keys, ``[task_args]`` and ``[strategy_args]`` tables (and ``[probe]`` in a run
that names a probe set) and the signature in hex.
Loading rebuilds the canonical body (potluck.manifest) from the values and verifies the signature, so
the file may be reformatted by hand but not edited.

`potluck init`, `potluck demo`, the tests and the benches create a run with :func:`write_run`; a node
reads its manifest back with :func:`load_manifest` and the genesis weights from :func:`genesis_path`,
and keeps a copy in its data dir (:func:`manifest_cache`).
The genesis is the task's seeded init, or a given (pre-trained) state of the same model
(`potluck init --genesis`); either way the manifest names its version hash.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from potluck.atomic import atomic_write_bytes
from potluck.hashing import version_hash
from potluck.identity import NodeIdentity
from potluck.manifest import DOMAIN, Manifest, ManifestError, TaskArg, create_manifest
from potluck.store.versions import VersionStore, atomic_save
from potluck.tasks import State, check_genesis, genesis, get_task
from potluck.updates.validation import ValidationContext

__all__ = [
    "WrittenRun",
    "cached_manifest",
    "genesis_path",
    "load_manifest",
    "manifest_cache",
    "manifest_toml",
    "run_context",
    "save_manifest",
    "write_run",
]


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
    genesis_state: Mapping[str, np.ndarray] | None = None,
    **rules: Any,
) -> WrittenRun:
    """Create a run of ``task``: its genesis weights (``genesis_state`` if given, which must be the
    task's model: see :func:`potluck.tasks.check_genesis`; else ``task.init_state(seed)``) and its
    manifest, signed by ``creator`` (default: a fresh identity); write the manifest to ``path`` and the
    weights beside it.

    ``rules`` are the other :func:`create_manifest` arguments (round_seconds, start_time, created,
    density, values, quorum, strategy, admission, allow, ...). Raises TaskError or ManifestError before
    writing anything, FileNotFoundError when the folder of ``path`` does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():  # before the work, and safetensors would say it in its own words
        raise FileNotFoundError(2, "no such folder", str(path.parent))
    task_args = dict(task_args or {})
    the_task = get_task(task, task_args)
    if genesis_state is None:
        state, genesis_hash = genesis(the_task, seed)
    else:
        check_genesis(the_task, genesis_state, seed)
        state = dict(genesis_state)
        genesis_hash = version_hash(state)
    manifest = create_manifest(
        creator or NodeIdentity.generate(), task, genesis_hash, task_args=task_args, seed=seed, **rules
    )
    atomic_save(state, genesis_path(path))
    save_manifest(manifest, path)
    return WrittenRun(manifest, path, state, genesis_hash)


def genesis_path(manifest_path: Path) -> Path:
    """Where `potluck init` writes the genesis weights: ``run.toml`` -> ``run.genesis.safetensors``."""
    return manifest_path.with_name(manifest_path.stem + ".genesis.safetensors")


def manifest_cache(data_dir: Path, run: str) -> Path:
    """Where a node keeps the manifest of run id ``run`` (its signed bytes), fetched or given, so that
    its next start and the commands that read its data dir (`log`, `generate`) know the run."""
    return Path(data_dir) / f"{run}.manifest"


def cached_manifest(data_dir: Path, run: str) -> Manifest | None:
    """The manifest a node in ``data_dir`` kept for run id ``run`` (checked), or None."""
    try:
        return Manifest.from_bytes(manifest_cache(data_dir, run).read_bytes(), run)
    except (OSError, ManifestError):
        return None


def manifest_toml(m: Manifest) -> str:
    """The manifest as TOML (tomllib reads it back; :func:`load_manifest` verifies it)."""
    lines = [f"# potluck run manifest ({DOMAIN})"]
    if m.signed:
        lines.append(f"# run_id = {m.run_id} (informative: recomputed on load)")
    for key, value in m.field_values().items():
        if key in ("task_args", "strategy_args", "probe") or value is None:
            continue  # TOML has no null: an absent max_update_norm is None
        lines.append(f"{key} = {_toml_value(value)}")
    lines.append(f"signature = {_toml_value(m.signature.hex())}")
    lines.append("")
    for table in ("task_args", "strategy_args", "probe")[: 3 if m.probe else 2]:
        lines.append(f"[{table}]")
        for key, value in getattr(m, table).items():
            lines.append(f"{_toml_string(key)} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def save_manifest(m: Manifest, path: Path) -> None:
    """Write the manifest's TOML file atomically."""
    atomic_write_bytes(Path(path), manifest_toml(m).encode())


def _toml_string(s: str) -> str:
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return _toml_string(value)
    if type(value) is int:
        return str(value)
    if type(value) is float:
        return repr(value)  # shortest repr that round-trips; finite (checked on construction)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def load_manifest(path: Path) -> Manifest:
    """Read a manifest TOML file and verify its signature; raise :class:`ManifestError` if anything is off."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read manifest {path}: {e}") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"manifest {path} is not valid TOML: {e}") from None
    signature_hex = values.pop("signature", None)
    if not isinstance(signature_hex, str) or not re.fullmatch(r"[0-9a-f]{128}", signature_hex):
        raise ManifestError(f"manifest {path}: signature must be 128 hex digits")
    values.setdefault("task_args", {})
    values.setdefault("strategy_args", {})
    values.setdefault("max_update_norm", None)
    try:
        manifest = Manifest.from_values(values, bytes.fromhex(signature_hex))
    except ManifestError as e:
        raise ManifestError(f"manifest {path}: {e}") from None
    except TypeError as e:
        raise ManifestError(f"manifest {path}: {e}") from None
    if not manifest.verify():
        raise ManifestError(
            f"manifest {path}: the signature does not match its contents (creator {manifest.creator})"
        )
    return manifest


def run_context(manifest: Manifest, versions: VersionStore) -> ValidationContext:
    """What an update must match to be part of a run with a manifest: its genesis shapes and rules."""
    genesis_state = versions.get(manifest.genesis)
    groups = manifest.group_rules
    return ValidationContext(
        run=manifest.run_id,
        round=0,
        shapes={n: tuple(t.shape) for n, t in genesis_state.items()},
        known_bases=frozenset({manifest.genesis}),
        rounds_behind=1 if manifest.pacing == "ready" else 0,  # late updates count in the next round
        admitted=(
            frozenset(bytes.fromhex(a) for a in manifest.allow) if manifest.admission == "allowlist" else None
        ),
        max_norm=manifest.max_update_norm,
        frozen=groups.frozen(genesis_state),
        max_rank=manifest.max_rank,
        rank_limits={n: int(v) for n, v in groups.limits(genesis_state, "max_rank").items()},
        density_limits=groups.limits(genesis_state, "max_density"),
    )
