"""Validated update envelopes on disk, named by update id: what a node holds and serves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from potluck.atomic import atomic_write_bytes

_ID_RE = re.compile(r"[0-9a-f]{64}")


class UpdateStore:
    """``<root>/<id>.update`` files, written crash-safely; ids are checked before touching the disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, update_id: str) -> Path:
        if not isinstance(update_id, str) or not _ID_RE.fullmatch(update_id):
            raise ValueError(f"not an update id: {update_id!r}")
        return self.root / f"{update_id}.update"

    def has(self, update_id: str) -> bool:
        return self.path(update_id).is_file()

    def put(self, update_id: str, data: bytes) -> None:
        path = self.path(update_id)
        if not path.is_file():
            atomic_write_bytes(path, data)

    def get(self, update_id: str) -> bytes:
        return self.path(update_id).read_bytes()

    def delete(self, update_id: str) -> None:
        self.path(update_id).unlink(missing_ok=True)

    def ids(self) -> Iterator[str]:
        for path in self.root.glob("*.update"):
            if _ID_RE.fullmatch(path.stem):
                yield path.stem
