"""Modules over the swarm (pure): "I hold module X" announcements, name claims, and who owns a name.

* A **name claim** is signed by a module's author: ``["potluck/module-claim/v1", run_id, name, author,
  claimed_at]``. The author's node makes it the first time it sees its own module under that name
  (exchange/modules.py) and every holder carries it on with the module.
* An **announcement** is signed by a holder and stored under ``potluck/<run>/modules`` (subkey: the
  module id), and pushed to the run's peers: ``[module_id, name, author, version, size, holders,
  announcer, timestamp, claim]``, ``claim`` being the author's claim bytes (empty: none known). Like an
  update announcement it is only a hint of where to fetch: the bytes are checked against the id, then
  as `potluck module add` checks them.
* **Ownership** (:func:`owner`): a name belongs to the author of its earliest claim, by ``claimed_at``
  (ties: the smaller author key); a claim dated more than MAX_CLOCK_SKEW_S ahead of the reader's
  clock is ignored. Every node applies this to the claims it has seen; docs/modules.md says what it
  leaves open.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from potluck.identity import PUBLIC_KEY_SIZE, NodeIdentity, node_id_of, peer_id_of
from potluck.modules.record import MAX_BYTES, Module, ModuleRefused
from potluck.signed import RecordError, RecordFormat

__all__ = [
    "MAX_ANNOUNCEMENT_BYTES", "MAX_HOLDERS", "BadModuleAnnouncement", "ModuleAnnouncement", "NameClaim",
    "check_owner", "modules_key", "owner",
]  # fmt: skip

MAX_HOLDERS = 8
MAX_CLAIM_BYTES = 512
MAX_ANNOUNCEMENT_BYTES = 2048  # far below hivemind's 16 KiB DHT value hazard (../shared/HIVEMIND.md)
MAX_CLOCK_SKEW_S = 60.0


class BadModuleAnnouncement(RecordError):
    pass


CLAIM = RecordFormat("potluck/module-claim/v1", fields=4, max_bytes=MAX_CLAIM_BYTES, max_depth=1,
                     error=BadModuleAnnouncement, max_str_len=128)  # fmt: skip
ANNOUNCEMENT = RecordFormat("potluck/module-announce/v1", fields=9, max_bytes=MAX_ANNOUNCEMENT_BYTES,
                            max_depth=2, error=BadModuleAnnouncement, max_array_len=10,
                            max_str_len=128)  # fmt: skip


def modules_key(run: str) -> str:
    return f"potluck/{run}/modules"


def _key(value: object) -> bool:
    return type(value) is bytes and len(value) == PUBLIC_KEY_SIZE


@dataclass(frozen=True)
class NameClaim:
    run_id: str
    name: str
    author: bytes
    claimed_at: float  # unix seconds, by the author's clock

    def sign(self, identity: NodeIdentity) -> bytes:
        body = CLAIM.body(self.run_id, self.name, self.author, self.claimed_at)
        return CLAIM.sign(identity, self.author, body)

    @classmethod
    def verify(cls, data: bytes) -> NameClaim:
        fields, body, signature = CLAIM.open(data)
        run_id, name, author, claimed_at = fields
        if not (type(run_id) is str and type(name) is str and _key(author) and type(claimed_at) is float):
            raise BadModuleAnnouncement("malformed", "a claim is [run id, name, author, claimed_at]")
        if not math.isfinite(claimed_at):
            raise BadModuleAnnouncement("malformed", "claimed_at is not finite")
        CLAIM.check_signature(author, signature, body)
        return cls(run_id, name, author, claimed_at)


def owner(claims: Iterable[NameClaim], now: float) -> NameClaim | None:
    """The claim that owns its name among ``claims`` (all of one run and name): the earliest, ties to
    the smaller author key; claims dated after ``now`` + MAX_CLOCK_SKEW_S do not count (yet)."""
    valid = [c for c in claims if c.claimed_at <= now + MAX_CLOCK_SKEW_S]
    return min(valid, key=lambda c: (c.claimed_at, c.author), default=None)


def check_owner(m: Module, claims: Iterable[NameClaim], now: float) -> None:
    """ModuleRefused (``name_taken``) if ``claims`` (of ``m``'s name) give the name to another author."""
    first = owner(claims, now)
    if first is not None and first.author != m.author:
        raise ModuleRefused(
            "name_taken",
            f"module name already taken by another author: {m.name} "
            f"(claimed first by {node_id_of(first.author)[:16]})",
        )


@dataclass(frozen=True)
class ModuleAnnouncement:
    module_id: str  # hex sha256 of the signed module record
    name: str
    author: bytes  # the module's author (as the announcer says: the record's signature decides)
    version: int
    size: int  # bytes of the signed record
    holders: tuple[str, ...]  # peer ids holding the bytes, announcer first
    announcer: bytes
    timestamp: float
    claim: bytes = b""  # the author's signed NameClaim for ``name``, if the announcer has it

    def sign(self, identity: NodeIdentity) -> bytes:
        """The announcer signs its own announcement (ValueError for any other key)."""
        body = ANNOUNCEMENT.body(
            bytes.fromhex(self.module_id), self.name, self.author, self.version, self.size,
            list(self.holders), self.announcer, self.timestamp, self.claim,
        )  # fmt: skip
        return ANNOUNCEMENT.sign(identity, self.announcer, body)

    @classmethod
    def verify(cls, data: bytes, run_id: str) -> ModuleAnnouncement:
        """Parse and check a signed announcement of run ``run_id``, and the claim it carries (of the same
        run, name and author); BadModuleAnnouncement on anything wrong."""
        fields, body, signature = ANNOUNCEMENT.open(data)
        module_id, name, author, version, size, holders, announcer, timestamp, claim = fields
        ok = (
            type(module_id) is bytes and len(module_id) == 32
            and type(name) is str and _key(author) and _key(announcer)
            and type(version) is int and version >= 1
            and type(size) is int and 0 < size <= MAX_BYTES
            and type(holders) is list and 0 < len(holders) <= MAX_HOLDERS
            and all(type(h) is str for h in holders)
            and type(timestamp) is float and type(claim) is bytes
        )  # fmt: skip
        if not ok:
            raise BadModuleAnnouncement("malformed", "wrong field types")
        ANNOUNCEMENT.check_signature(announcer, signature, body)
        if holders[0] != peer_id_of(announcer):
            raise BadModuleAnnouncement("malformed", "the announcer must be the first holder")
        if claim:
            c = NameClaim.verify(claim)
            if (c.run_id, c.name, c.author) != (run_id, name, author):
                raise BadModuleAnnouncement("malformed", "the claim is not the author's of this run and name")
        return cls(module_id.hex(), name, author, version, size, tuple(holders), announcer, timestamp, claim)
