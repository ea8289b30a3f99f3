"""Model versions on disk: a content-addressed safetensors store (hashing: potluck.hashing).

Files are safetensors: nothing is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import safetensors.numpy

from potluck.atomic import atomic_write
from potluck.hashing import canonical, is_version_hash, version_hash

__all__ = ["CorruptVersion", "VersionNotFound", "VersionStore", "atomic_save", "load_state"]


class VersionNotFound(KeyError):
    """No version with that hash in the store."""


class CorruptVersion(ValueError):
    """A stored file does not parse or does not hash to its name."""


def load_state(path: Path) -> dict[str, np.ndarray]:
    """Read a safetensors file; any parse failure is :class:`CorruptVersion`."""
    try:
        return safetensors.numpy.load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CorruptVersion(f"{path}: {e}") from None


def atomic_save(state: Mapping[str, np.ndarray], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``state`` as safetensors to ``path`` crash-safely (see :func:`atomic_write`)."""
    tensors = {name: canonical(t) for name, t in state.items()}
    atomic_write(Path(path), lambda tmp: safetensors.numpy.save_file(tensors, str(tmp), metadata=metadata))


class VersionStore:
    """Versions as ``<root>/<version hash>.safetensors``; every load is checked against its name."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, version: str) -> Path:
        if not is_version_hash(version):
            raise ValueError(f"not a version hash: {version!r}")
        return self.root / f"{version}.safetensors"

    def has(self, version: str) -> bool:
        return self.path(version).is_file()

    def put(self, state: Mapping[str, np.ndarray]) -> str:
        """Store ``state`` (no-op when already there) and return its version hash."""
        version = version_hash(state)
        path = self.path(version)
        if not path.is_file():
            atomic_save(state, path, metadata={"potluck_version": version})
        return version

    def get(self, version: str) -> dict[str, np.ndarray]:
        """Load a version; raise :class:`CorruptVersion` if the file does not hash to ``version``."""
        path = self.path(version)
        try:
            state = load_state(path)
        except FileNotFoundError:
            raise VersionNotFound(version) from None
        try:
            actual = version_hash(state)
        except ValueError as e:
            raise CorruptVersion(f"{path}: {e}") from None
        if actual != version:
            raise CorruptVersion(f"{path} hashes to {actual}")
        return state
