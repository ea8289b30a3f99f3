"""The ban registry: authors whose updates this node rejects for the rest of the run.

A ban names an author (its Ed25519 public key, = node id), a reason ("equivocation" for two signed
updates in one round; other checks add their own, e.g. "lying_reducer"), the round of the offence
and the id of the evidence that proves it. ``evidence`` optionally keeps the evidence itself (bytes
the registry does not interpret), so the node can serve and republish it after a restart.

The first ban of an author is kept; later ones for the same author change nothing. Bans are never
lifted during a run. The registry is thread-safe (the update validator asks ``is_banned`` from a
worker thread) and, with a path, persistent: the whole set is rewritten atomically (temp file,
fsync, rename) on every new ban, so a crash leaves the old set or the new one.

File format (JSON): ``{"version": 1, "bans": [{"node_id": hex, "reason": str, "round": int,
"evidence_id": str, "since": unix seconds, "evidence": hex}, ...]}``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from potluck.atomic import atomic_write_bytes
from potluck.identity import PUBLIC_KEY_SIZE

__all__ = ["Ban", "BanRegistry", "BanStoreError"]

logger = logging.getLogger(__name__)

MAX_REASON_LEN = 64
MAX_EVIDENCE_ID_LEN = 128


class BanStoreError(Exception):
    """The ban file exists but cannot be read back (the node refuses to start rather than forget bans)."""


@dataclass(frozen=True)
class Ban:
    node_id: bytes  # the author's public key
    reason: str  # "equivocation", "lying_reducer", ...
    round: int  # round of the offence
    evidence_id: str  # what proves it (for equivocation: potluck.defence.evidence.Equivocation.evidence_id)
    since: float  # unix time this node banned it
    evidence: bytes = b""  # the evidence itself, if the reason keeps it (opaque here)

    def to_json(self) -> dict:
        return {
            "node_id": self.node_id.hex(),
            "reason": self.reason,
            "round": self.round,
            "evidence_id": self.evidence_id,
            "since": self.since,
            "evidence": self.evidence.hex(),
        }

    @classmethod
    def from_json(cls, item: dict) -> Ban:
        ban = cls(
            bytes.fromhex(item["node_id"]),
            str(item["reason"]),
            int(item["round"]),
            str(item["evidence_id"]),
            float(item["since"]),
            bytes.fromhex(item.get("evidence", "")),
        )
        _check(ban.node_id, ban.reason, ban.round, ban.evidence_id)
        return ban


def _check(node_id: bytes, reason: str, round_: int, evidence_id: str) -> None:
    if type(node_id) is not bytes or len(node_id) != PUBLIC_KEY_SIZE:
        raise ValueError("node_id must be a 32-byte public key")
    if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON_LEN:
        raise ValueError(f"reason must be a non-empty str of at most {MAX_REASON_LEN} characters")
    if type(round_) is not int or round_ < 0:
        raise ValueError("round must be a non-negative int")
    if not isinstance(evidence_id, str) or not 0 < len(evidence_id) <= MAX_EVIDENCE_ID_LEN:
        raise ValueError("evidence_id must be a non-empty str")


class BanRegistry:
    """``BanRegistry(path)``: the bans of one run, persisted at ``path`` (None: in memory only).

    API: :meth:`ban`, :meth:`is_banned`, :meth:`get`, :meth:`list`, :meth:`by_evidence`,
    :meth:`subscribe`. Raises :class:`BanStoreError` if ``path`` exists but is unreadable.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._bans: dict[bytes, Ban] = {}
        self._listeners: list[Callable[[Ban], None]] = []
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                if data.get("version") != 1:
                    raise ValueError(f"unknown version {data.get('version')!r}")
                for item in data["bans"]:
                    ban = Ban.from_json(item)
                    self._bans.setdefault(ban.node_id, ban)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise BanStoreError(f"cannot read the ban list {self.path}: {e}") from None

    def ban(self, node_id: bytes, reason: str, round: int, evidence_id: str, evidence: bytes = b"") -> bool:
        """Ban ``node_id`` for the run; True if it was not banned before (then listeners are called)."""
        _check(node_id, reason, round, evidence_id)
        with self._lock:
            if node_id in self._bans:
                return False
            ban = Ban(node_id, reason, round, evidence_id, time.time(), bytes(evidence))
            self._bans[node_id] = ban
            self._save()
            listeners = list(self._listeners)
        logger.warning(
            f"banned {node_id.hex()[:16]} for the run: {reason} in round {round} ({evidence_id[:16]})"
        )
        for listener in listeners:
            try:
                listener(ban)
            except Exception:  # a listener's bug must not undo or hide the ban
                logger.exception("a ban listener failed")
        return True

    def is_banned(self, node_id: bytes) -> bool:
        return node_id in self._bans  # a dict lookup: atomic under the GIL

    def get(self, node_id: bytes) -> Ban | None:
        return self._bans.get(node_id)

    def by_evidence(self, evidence_id: str) -> Ban | None:
        with self._lock:
            return next((b for b in self._bans.values() if b.evidence_id == evidence_id), None)

    def list(self) -> list[Ban]:
        """Every ban, oldest offence first."""
        with self._lock:
            return sorted(self._bans.values(), key=lambda b: (b.round, b.since, b.node_id))

    def subscribe(self, listener: Callable[[Ban], None]) -> None:
        """Call ``listener(ban)`` after each new ban (from the thread that banned)."""
        with self._lock:
            self._listeners.append(listener)

    def __len__(self) -> int:
        return len(self._bans)

    def __iter__(self) -> Iterator[Ban]:
        return iter(self.list())

    def _save(self) -> None:
        if self.path is None:
            return
        bans = sorted(self._bans.values(), key=lambda b: b.node_id)
        data = {"version": 1, "bans": [b.to_json() for b in bans]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, json.dumps(data, indent=1).encode())
