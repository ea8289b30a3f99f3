"""The local history of a run: one committed commit per round, with its signatures (SQLite).

The database is opened in WAL mode with ``synchronous=FULL``: a transaction that returned is on
disk, and a process killed at any point leaves the last committed transaction (SQLite's own
atomicity; ``PRAGMA integrity_check`` stays "ok").

Write order (crash safety): :meth:`History.record` first writes the version file V_{r+1} through
:class:`VersionStore` (temp file, fsync, rename, fsync of the directory), and only then inserts the
commit row in one transaction. So every row names a version that is already on disk, whatever
moment the process dies at:

* killed before or during the version write: no new file (or a stray temp file), no row;
* killed after the version write, before the row: an unreferenced, content-addressed version file
  (harmless; reused when the round is recorded again), and ``latest()`` is the previous commit;
* killed during the row's transaction: SQLite rolls it back on the next open.

In every case the version of :meth:`History.latest` is loadable.

The history does not check that consecutive rounds chain (parent = previous version): a node that
joins late records the commit it synced from, with gaps before it; the round engine checks chains.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from potluck.rounds.commit import Commit, CommitError, CommitSignature, commit_id
from potluck.store.versions import VersionStore

__all__ = ["HISTORY_FILE", "History", "HistoryConflict", "HistoryError"]

HISTORY_FILE = "history.sqlite"  # in a node's data dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commits (
    round INTEGER PRIMARY KEY,
    commit_id TEXT NOT NULL UNIQUE,
    version TEXT NOT NULL,
    parent TEXT NOT NULL,
    body BLOB NOT NULL,
    committed_at REAL NOT NULL,
    n_updates INTEGER NOT NULL,
    contributors TEXT NOT NULL,
    accuracy REAL
);
CREATE INDEX IF NOT EXISTS commits_version ON commits (version);
CREATE TABLE IF NOT EXISTS signatures (
    commit_id TEXT NOT NULL REFERENCES commits (commit_id) ON DELETE CASCADE,
    node_id TEXT NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (commit_id, node_id)
);
"""

# Test hook: called after the version file is durable and before the commit row is written.
_after_version_write: Callable[[Commit], None] | None = None


class HistoryError(Exception):
    """The history cannot record this commit (e.g. its version is not stored)."""


class HistoryConflict(HistoryError):
    """A different commit is already recorded for that round."""


class History:
    """``History(path, versions)``: the SQLite history at ``path``; ``versions`` is the store that
    :meth:`record` writes states to (and checks versions against). Thread-safe; use as a context
    manager or call :meth:`close`."""

    def __init__(self, path: Path, versions: VersionStore | None = None, *, readonly: bool = False) -> None:
        """``readonly``: for readers beside a running node (`potluck log`): no schema writes."""
        self.path = Path(path)
        self.versions = versions
        self._lock = threading.Lock()
        if readonly:
            uri = f"file:{self.path.resolve()}?mode=ro"
            self._db = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30
            )
            return
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ writes

    def record(
        self,
        commit: Commit,
        signatures: Iterable[CommitSignature] = (),
        state: Mapping[str, np.ndarray] | None = None,
        *,
        committed_at: float | None = None,
        replace: bool = False,
    ) -> int:
        """Record ``commit`` (version first, then the row); return the number of signatures stored.

        With ``state`` the version is written to the store first (it must hash to
        ``commit.version``); without it, the store must already hold the version. Signatures that do
        not verify, or whose signer is not a participant, are skipped. Recording the same commit
        again adds its new signatures. A different commit for a recorded round raises
        :class:`HistoryConflict`, unless ``replace`` (fork choice switched): then that round and all
        later ones are deleted first, and so is a row of the round before whose version is not the
        commit's parent (it lost the fork choice: the winning chain names another V_{r-1}), so the
        history stays one chain, with a gap where this node holds no commit of the winning one.
        """
        if state is not None:
            if self.versions is None:
                raise HistoryError("a state was given but the history has no version store")
            written = self.versions.put(state, parent=commit.parent)
            if written != commit.version:
                raise HistoryError(f"the state hashes to {written}, the commit names {commit.version}")
        elif self.versions is not None and not self.versions.has(commit.version):
            raise HistoryError(f"version {commit.version} is not stored: write it before the commit")
        if _after_version_write is not None:
            _after_version_write(commit)
        cid = commit_id(commit)
        participants = set(commit.participants)
        rows = [
            (cid, s.node_id, s.signature) for s in signatures if s.node_id in participants and s.verify(cid)
        ]
        with self._lock, self._transaction():
            existing = self._db.execute(
                "SELECT commit_id FROM commits WHERE round = ?", (commit.round,)
            ).fetchone()
            if existing is not None and existing[0] != cid:
                if not replace:
                    raise HistoryConflict(f"round {commit.round} already has commit {existing[0]}, not {cid}")
                self._db.execute("DELETE FROM commits WHERE round >= ?", (commit.round,))
                existing = None
            if replace:
                self._db.execute(
                    "DELETE FROM commits WHERE round = ? AND version != ?", (commit.round - 1, commit.parent)
                )
            if existing is None:
                self._db.execute(
                    "INSERT INTO commits (round, commit_id, version, parent, body, committed_at, n_updates,"
                    " contributors) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (commit.round, cid, commit.version, commit.parent, commit.body(),
                     time.time() if committed_at is None else committed_at, len(commit.updates),
                     json.dumps(list(commit.contributors))),
                )  # fmt: skip
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO signatures (commit_id, node_id, signature) VALUES (?, ?, ?)", rows
            )
            return self._db.total_changes - before

    def set_accuracy(self, round: int, accuracy: float | None) -> None:
        with self._lock, self._transaction():
            self._db.execute("UPDATE commits SET accuracy = ? WHERE round = ?", (accuracy, round))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    # ------------------------------------------------------------------------------------- reads

    def _commit_of(self, row: tuple[bytes] | None) -> Commit | None:
        if row is None:
            return None
        try:
            return Commit.from_bytes(row[0])
        except CommitError as e:
            raise HistoryError(f"{self.path}: corrupt commit row: {e}") from None

    def latest(self) -> Commit | None:
        """The commit of the highest recorded round, or None."""
        with self._lock:
            row = self._db.execute("SELECT body FROM commits ORDER BY round DESC LIMIT 1").fetchone()
        return self._commit_of(row)

    def get(self, round: int) -> Commit | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM commits WHERE round = ?", (round,)).fetchone()
        return self._commit_of(row)

    def signatures(self, round: int) -> list[CommitSignature]:
        with self._lock:
            rows = self._db.execute(
                "SELECT s.node_id, s.signature FROM signatures s JOIN commits c USING (commit_id)"
                " WHERE c.round = ? ORDER BY s.node_id",
                (round,),
            ).fetchall()
        return [CommitSignature(node, bytes(sig)) for node, sig in rows]

    # A commit that left the version as it was (every counted update weighed 0) made no step: the commit
    # that "made" a version is the one that changed the model to it, the same on every node.
    _MADE = "SELECT round, parent FROM commits WHERE version = ? AND parent != version ORDER BY round DESC"

    def made(self, version: str) -> tuple[Commit, list[CommitSignature]] | None:
        """The recorded commit that changed the model to ``version``, with its stored signatures (None:
        none here)."""
        with self._lock:
            row = self._db.execute(self._MADE, (version,)).fetchone()
        commit = self.get(row[0]) if row is not None else None
        return (commit, self.signatures(commit.round)) if commit is not None else None

    def parent_of(self, version: str) -> str | None:
        """The parent of the recorded commit that changed the model to ``version`` (None: none here)."""
        with self._lock:
            row = self._db.execute(self._MADE, (version,)).fetchone()
        return row[1] if row is not None else None

    def has_version(self, version: str) -> bool:
        """Whether a recorded commit produced ``version``."""
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM commits WHERE version = ? LIMIT 1", (version,)).fetchone()
                is not None
            )

    def log(self) -> list[dict[str, Any]]:
        """One dict per recorded round, oldest first: round, commit, version, parent, updates,
        contributors, signatures, time, accuracy."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.round, c.commit_id, c.version, c.parent, c.n_updates, c.contributors,"
                " c.committed_at, c.accuracy,"
                " (SELECT COUNT(*) FROM signatures s WHERE s.commit_id = c.commit_id)"
                " FROM commits c ORDER BY c.round"
            ).fetchall()
        return [
            {"round": r, "commit": cid, "version": v, "parent": p, "updates": n,
             "contributors": json.loads(cs), "signatures": k, "time": t, "accuracy": a}
            for r, cid, v, p, n, cs, t, a, k in rows
        ]  # fmt: skip

    def integrity_check(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
