"""The node's data dir: created private, checked usable, and locked to one node at a time."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from potluck.errors import ConfigError

LOCK_FILE = "lock"


def prepare_data_dir(path: Path) -> Path:
    """Create the data dir (mode 0700) if needed and check we can use it; ConfigError otherwise."""
    path = path.expanduser()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create data dir {path}: {e.strerror}") from None
    if not path.is_dir():
        raise ConfigError(f"data dir {path} is not a directory")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"data dir {path} is not readable and writable by this user")
    return path


class DataDirLock:
    """One node per data dir: an exclusive flock on ``<data-dir>/lock`` for the node's lifetime."""

    def __init__(self, data_dir: Path):
        self._path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"data dir {self._path.parent} is in use by another node (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
