"""Equivocation evidence (pure): proof that one author signed two different updates for one round.

The proof is the two signed updates themselves: any node checks both signatures and sees the same
author, run and round under two different ids. Updates can be large, so what travels in the DHT is a
small claim naming them, and verifiers fetch the two updates by id through the update exchange.

* claim (:class:`Equivocation`) body = msgpack ``["potluck/equivocation/v1", run, round, author,
  first_id, second_id]`` with the two ids as 32-byte bins, ``first_id < second_id``;
  ``evidence_id = sha256(body)`` hex: the same for every node that finds the same pair.
* record (:class:`EvidenceRecord`): ``[body, signature]`` where body = msgpack
  ``["potluck/evidence-record/v1", claim body, reporter, timestamp]``, signed (Ed25519) by the
  reporter, a node that verified the claim and holds both updates (a place to fetch them from).
  Stored under ``potluck/<run>/evidence/<round>``, subkey = the evidence id. A record's signature
  only says who to ask; the claim stands or falls by :func:`check_equivocation` alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from potluck.identity import PUBLIC_KEY_SIZE, NodeIdentity
from potluck.signed import RecordError, RecordFormat
from potluck.updates.codec import DecodeLimits, parse_update
from potluck.updates.reasons import UpdateRejected

__all__ = [
    "BadEvidence",
    "Equivocation",
    "EvidenceRecord",
    "check_equivocation",
    "evidence_key",
]

DOMAIN = "potluck/equivocation/v1"
RECORD_DOMAIN = "potluck/evidence-record/v1"
MAX_CLAIM_BYTES = 512
MAX_RECORD_BYTES = 1024  # far below hivemind's 15 KB DHT value hazard
MAX_RUN_LEN = 256
REASON = "equivocation"  # the ban reason it proves


class BadEvidence(RecordError):
    """Evidence that proves nothing; ``reason`` is a short code for counters."""


CLAIM = RecordFormat(DOMAIN, fields=5, max_bytes=MAX_CLAIM_BYTES, max_depth=1, error=BadEvidence,
                     max_array_len=6, max_str_len=MAX_RUN_LEN)  # fmt: skip
RECORD = RecordFormat(RECORD_DOMAIN, fields=3, max_bytes=MAX_RECORD_BYTES, max_depth=1, error=BadEvidence,
                      max_array_len=4, max_str_len=64,
                      bad_signature_reason="bad_record_signature")  # fmt: skip


def evidence_key(run: str, round_: int) -> str:
    return f"potluck/{run}/evidence/{round_}"


def _is_id(x: object) -> bool:
    return type(x) is bytes and len(x) == 32


@dataclass(frozen=True)
class Equivocation:
    """The claim "``author`` signed updates ``first_id`` and ``second_id`` for ``round`` of ``run``"."""

    run: str
    round: int
    author: bytes
    first_id: str  # hex; first_id < second_id
    second_id: str

    def __post_init__(self) -> None:
        if not isinstance(self.run, str) or not 0 < len(self.run) <= MAX_RUN_LEN:
            raise BadEvidence("malformed", "run")
        if type(self.round) is not int or self.round < 0:
            raise BadEvidence("malformed", "round")
        if type(self.author) is not bytes or len(self.author) != PUBLIC_KEY_SIZE:
            raise BadEvidence("malformed", "author")
        try:
            a, b = bytes.fromhex(self.first_id), bytes.fromhex(self.second_id)
        except (TypeError, ValueError):
            raise BadEvidence("malformed", "update ids") from None
        if not (_is_id(a) and _is_id(b)):
            raise BadEvidence("malformed", "update ids")
        if a == b:
            raise BadEvidence("same_update", self.first_id)
        if a > b:
            raise BadEvidence("malformed", "update ids out of order")

    @classmethod
    def of(cls, run: str, round_: int, author: bytes, id_a: str, id_b: str) -> Equivocation:
        """The claim for two ids in either order."""
        first, second = sorted((id_a, id_b))
        return cls(run, round_, author, first, second)

    def body(self) -> bytes:
        return CLAIM.body(
            self.run, self.round, self.author, bytes.fromhex(self.first_id), bytes.fromhex(self.second_id)
        )

    @property
    def evidence_id(self) -> str:
        return hashlib.sha256(self.body()).hexdigest()

    @property
    def update_ids(self) -> tuple[str, str]:
        return self.first_id, self.second_id

    @classmethod
    def from_bytes(cls, data: bytes) -> Equivocation:
        run, round_, author, a, b = CLAIM.fields_of(data)
        if not (_is_id(a) and _is_id(b)):
            raise BadEvidence("malformed", "update ids")
        claim = cls(run, round_, author, a.hex(), b.hex())
        if claim.body() != data:
            raise BadEvidence("malformed", "not canonical")
        return claim


@dataclass(frozen=True)
class EvidenceRecord:
    """A signed pointer to a claim: "I, ``reporter``, verified it and hold both updates"."""

    claim: Equivocation
    reporter: bytes  # public key
    timestamp: float

    def _body(self) -> bytes:
        return RECORD.body(self.claim.body(), self.reporter, float(self.timestamp))

    def sign(self, identity: NodeIdentity) -> bytes:
        """The reporter signs its own record (ValueError for any other key)."""
        return RECORD.sign(identity, self.reporter, self._body())

    @classmethod
    def verify(cls, data: bytes) -> EvidenceRecord:
        """Parse a record from the DHT and check the reporter's signature; BadEvidence otherwise."""
        fields, body, signature = RECORD.open(data)
        claim_bytes, reporter, timestamp = fields
        if type(claim_bytes) is not bytes or type(reporter) is not bytes or type(timestamp) is not float:
            raise BadEvidence("malformed", "wrong field types")
        if len(reporter) != PUBLIC_KEY_SIZE:
            raise BadEvidence("malformed", "reporter")
        RECORD.check_signature(reporter, signature, body)
        return cls(Equivocation.from_bytes(claim_bytes), reporter, timestamp)


def check_equivocation(claim: Equivocation, first: bytes, second: bytes, limits: DecodeLimits) -> None:
    """Raise :class:`BadEvidence` unless ``first`` and ``second`` (the bytes of the claim's two ids)
    are updates validly signed by the claim's author for the claim's run and round.

    Only the envelopes and headers are checked (structure, canonical form, signature): whether the
    payloads would pass validation does not matter, a signature is a signature.
    """
    for uid, data in zip(claim.update_ids, (first, second), strict=True):
        try:
            p = parse_update(data, limits)
        except UpdateRejected as e:
            raise BadEvidence("bad_update", f"{uid[:16]}: {e}") from None
        if p.update_id != uid:
            raise BadEvidence("id_mismatch", f"bytes of {uid[:16]} hash to {p.update_id[:16]}")
        if p.author != claim.author:
            raise BadEvidence("wrong_author", f"{uid[:16]} is by {p.author.hex()[:16]}")
        if p.run != claim.run:
            raise BadEvidence("wrong_run", f"{uid[:16]} is for run {p.run[:32]!r}")
        if p.round != claim.round:
            raise BadEvidence("wrong_round", f"{uid[:16]} is for round {p.round}, not {claim.round}")
