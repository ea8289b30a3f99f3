"""Declarations (pure): "I train for round r", signed by a contributor: as it publishes its update
for round r - 1 (naming V_{r-1}, the base it had), and again when V_r reaches it (naming V_r).

Under "ready" pacing (rounds/schedule.py) a round stops collecting once every contributor that
declared itself for it has published: the declarations are what lets a keeper know whom it still
waits for, from signed records rather than from its own timing. A declaration is a promise, not a
right: one that is never kept only makes the round wait for its clock bound.

Key ``potluck/<run>/round/<r>/declared``, subkey = the author's public key, value =
``[domain, run, round, base, author, timestamp]`` + the author's Ed25519 signature (under 256 bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from potluck.identity import PUBLIC_KEY_SIZE, NodeIdentity
from potluck.signed import RecordError, RecordFormat

DOMAIN = "potluck/declaration/v1"
MAX_DECLARATION_BYTES = 512


class BadDeclaration(RecordError):
    pass


FORMAT = RecordFormat(DOMAIN, fields=5, max_bytes=MAX_DECLARATION_BYTES, max_depth=1,
                      error=BadDeclaration, max_str_len=128)  # fmt: skip


def declarations_key(run_id: str, round_: int) -> str:
    return f"potluck/{run_id}/round/{round_}/declared"


@dataclass(frozen=True)
class Declaration:
    run: str
    round: int
    base: str  # the version (hex) the author trains on: V_r
    author: bytes  # public key
    timestamp: float

    def _body(self) -> bytes:
        return FORMAT.body(self.run, self.round, bytes.fromhex(self.base), self.author, self.timestamp)

    def sign(self, identity: NodeIdentity) -> bytes:
        """Only the author signs its declaration (ValueError for any other key)."""
        return FORMAT.sign(identity, self.author, self._body())

    @classmethod
    def verify(cls, data: bytes) -> Declaration:
        """Parse and check a signed declaration; BadDeclaration on anything wrong."""
        fields, body, signature = FORMAT.open(data)
        run, round_, base, author, timestamp = fields
        ok = (
            type(run) is str
            and type(round_) is int
            and round_ >= 0
            and type(base) is bytes
            and len(base) == 32
            and type(author) is bytes
            and len(author) == PUBLIC_KEY_SIZE
            and type(timestamp) is float
        )
        if not ok:
            raise BadDeclaration("malformed", "wrong field types")
        FORMAT.check_signature(author, signature, body)
        return cls(run, round_, base.hex(), author, timestamp)


def waiting_for(declared: Iterable[bytes], published: Iterable[bytes]) -> set[bytes]:
    """The declared authors without a held update yet: the round closes when none is left."""
    return set(declared) - set(published)


def close_reason(
    declared: Iterable[bytes], samples_by_author: Mapping[bytes, int], target_samples: int
) -> str | None:
    """Why a "ready" round may stop collecting now, from its signed declarations and the updates held
    (author -> samples they carry); None while it must wait. Without any update there is nothing to
    close on."""
    if not samples_by_author:
        return None
    if target_samples and sum(samples_by_author.values()) >= target_samples:
        return f"the target of {target_samples} samples is in"
    declared = set(declared)
    if declared and not waiting_for(declared, samples_by_author):
        return f"every declared contributor ({len(declared)}) has published"
    return None
