"""Model versions on disk: a content-addressed safetensors store (hashing: potluck.hashing).

A version is kept either whole (``<hash>.safetensors``, a snapshot) or as a patch of its parent
(``<hash>.delta.safetensors``, store/chain.py): with ``snapshot_every = N > 1``, :meth:`VersionStore.put`
given the parent writes a patch unless the parent's chain already holds N - 1 patches since its
snapshot (or the patch would not be under half the snapshot's bytes), so a run stores one snapshot
every N versions and between them only what changed. Reading a patched version materialises it from
its snapshot through the chain and checks the result against the version hash, like a snapshot: a
damaged or broken chain is :class:`CorruptVersion`. ``snapshot_every = 1`` (the default) keeps every
version whole. Files are safetensors: nothing is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from potluck.atomic import atomic_write
from potluck.hashing import canonical, is_version_hash, version_hash
from potluck.store.chain import apply_patch, make_patch, patch_bytes

__all__ = ["CorruptVersion", "VersionNotFound", "VersionStore", "atomic_save", "load_state"]

MAX_CHAIN = 1 << 16  # patches walked before a chain counts as broken (a loop, or a hostile file)


class VersionNotFound(KeyError):
    """No version with that hash in the store."""


class CorruptVersion(ValueError):
    """A stored file does not parse or does not hash to its name (for a patch: a damaged chain)."""


def load_state(path: Path) -> dict[str, np.ndarray]:
    """Read a safetensors file; any parse failure is :class:`CorruptVersion`."""
    try:
        return safetensors.numpy.load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CorruptVersion(f"{path}: {e}") from None


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safetensors.safe_open(str(path), framework="np") as f:
            return dict(f.metadata() or {})
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CorruptVersion(f"{path}: {e}") from None


def atomic_save(state: Mapping[str, np.ndarray], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``state`` as safetensors to ``path`` crash-safely (see :func:`atomic_write`)."""
    tensors = {name: canonical(t) for name, t in state.items()}
    atomic_write(Path(path), lambda tmp: safetensors.numpy.save_file(tensors, str(tmp), metadata=metadata))


class VersionStore:
    """Versions as snapshots or patches under ``root``; every load is checked against its name."""

    def __init__(self, root: Path, *, snapshot_every: int = 1) -> None:
        if type(snapshot_every) is not int or snapshot_every < 1:
            raise ValueError(f"snapshot_every is a positive int, got {snapshot_every!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.snapshot_every = snapshot_every
        self._last: tuple[str, dict[str, np.ndarray]] | None = None  # the last version put: the next's parent

    def path(self, version: str) -> Path:
        """Where the snapshot of ``version`` is (or would be)."""
        if not is_version_hash(version):
            raise ValueError(f"not a version hash: {version!r}")
        return self.root / f"{version}.safetensors"

    def patch_path(self, version: str) -> Path:
        return self.path(version).with_suffix(".delta.safetensors")

    def has(self, version: str) -> bool:
        return self.path(version).is_file() or self.patch_path(version).is_file()

    def is_patch(self, version: str) -> bool:
        return not self.path(version).is_file() and self.patch_path(version).is_file()

    def parent(self, version: str) -> str | None:
        """The version a patch patches (None for a snapshot)."""
        if not self.is_patch(version):
            return None
        parent = _metadata(self.patch_path(version)).get("potluck_parent", "")
        if not is_version_hash(parent):
            raise CorruptVersion(f"{self.patch_path(version)}: no parent version in its metadata")
        return parent

    def depth(self, version: str) -> int:
        """Patches between ``version`` and its snapshot (0: a snapshot)."""
        n = 0
        while (version := self.parent(version)) is not None:  # type: ignore[assignment]
            n += 1
            if n > MAX_CHAIN:
                raise CorruptVersion(f"{self.root}: a chain of over {MAX_CHAIN} patches (a loop?)")
        return n

    def stored(self) -> Iterator[tuple[str, str, int]]:
        """(version, "snapshot" or "patch", bytes on disk) of every stored version."""
        for path in sorted(self.root.glob("*.safetensors")):
            name = path.name.split(".")[0]
            if is_version_hash(name) and not path.name.startswith("."):
                kind = "patch" if path.name.endswith(".delta.safetensors") else "snapshot"
                yield name, kind, path.stat().st_size

    def put(self, state: Mapping[str, np.ndarray], parent: str | None = None) -> str:
        """Store ``state`` (no-op when already there) and return its version hash; as a patch of
        ``parent`` when the store keeps chains and the chain is not due a snapshot (see the module)."""
        version = version_hash(state)
        if self.has(version):
            self._last = (version, dict(state))
            return version
        chained = parent is not None and self.snapshot_every > 1 and self.has(parent)
        due = chained and self.depth(parent) + 1 >= self.snapshot_every  # type: ignore[arg-type]
        if chained and not due and self._put_patch(state, version, parent):  # type: ignore[arg-type]
            self._last = (version, dict(state))
            return version
        atomic_save(state, self.path(version), metadata={"potluck_version": version})
        self._last = (version, dict(state))
        return version

    def _put_patch(self, state: Mapping[str, np.ndarray], version: str, parent: str) -> bool:
        base = None
        if self._last is not None and self._last[0] == parent and version_hash(self._last[1]) == parent:
            base = self._last[1]  # what the node put last round (checked: nobody changed it in place)
        if base is None:
            base = self.get(parent)
        tensors, metadata = make_patch(base, state, parent, version)
        if patch_bytes(tensors) * 2 > sum(np.asarray(t).nbytes for t in state.values()):
            return False  # a patch this large saves little and slows every read after it
        atomic_write(
            self.patch_path(version),
            lambda tmp: safetensors.numpy.save_file(tensors, str(tmp), metadata=metadata),
        )
        return True

    def get(self, version: str) -> dict[str, np.ndarray]:
        """Load a version; raise :class:`CorruptVersion` if it does not hash to ``version``."""
        path = self.path(version)
        if not path.is_file() and self.patch_path(version).is_file():
            state = self._materialise(version)
        else:
            try:
                state = load_state(path)
            except FileNotFoundError:
                raise VersionNotFound(version) from None
        try:
            actual = version_hash(state)
        except ValueError as e:
            raise CorruptVersion(f"{path}: {e}") from None
        if actual != version:
            where = path if path.is_file() else f"{self.patch_path(version)} (through its chain)"
            raise CorruptVersion(f"{where} hashes to {actual}")
        return state

    def _materialise(self, version: str) -> dict[str, np.ndarray]:
        """A patched version from its snapshot and the patches after it (checked by :meth:`get`)."""
        chain = []
        current = version
        while not self.path(current).is_file():
            patch = self.patch_path(current)
            if not patch.is_file():
                raise CorruptVersion(f"damaged chain: {chain[-1][0]} patches {current}, which is not stored")
            metadata = _metadata(patch)
            chain.append((current, load_state(patch), metadata))
            current = metadata.get("potluck_parent", "")
            if not is_version_hash(current) or len(chain) > MAX_CHAIN:
                raise CorruptVersion(f"damaged chain: {patch} names no parent version (or loops)")
        state = load_state(self.path(current))
        for name, tensors, metadata in reversed(chain):
            try:
                state = apply_patch(state, tensors, metadata)
            except (KeyError, ValueError) as e:
                raise CorruptVersion(f"damaged chain: {self.patch_path(name)}: {e}") from None
        return state

    def make_whole(self, version: str) -> None:
        """Store a patched version as a snapshot (checked first), so that its parent may go."""
        if self.is_patch(version):
            atomic_save(self.get(version), self.path(version), metadata={"potluck_version": version})
            self.patch_path(version).unlink(missing_ok=True)

    def delete(self, version: str) -> None:
        """Remove a version's files (a patch of it first: the snapshot may be what others patch)."""
        self.patch_path(version).unlink(missing_ok=True)
        self.path(version).unlink(missing_ok=True)
