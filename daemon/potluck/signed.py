"""Signed records (pure): a domain-tagged msgpack body, and the Ed25519 signature of the key it names.

Announcements, round entries, evidence records and slice headers travel as
``pack_pair(body, signature)``: body = canonical msgpack ``[domain, *fields]``, signature = Ed25519
over the body by the key the record names (announcer, participant, reporter, reducer). Commits,
evidence claims, reducer faults and commit signatures use the same ``[domain, *fields]`` body alone.
A :class:`RecordFormat` holds that shell once (the domain, how many fields, the decoding bounds, the
record's exception); each record keeps its own fields and their checks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgpack

from potluck.identity import NodeIdentity, verify
from potluck.wire import WireError, bounded_unpackb, pack_pair, unpack_pair

__all__ = ["RecordError", "RecordFormat"]

# Readers look at the same records again and again (a keeper polls a round's declarations and entries
# every 50 ms): remember what verified, so each signature costs one Ed25519 check (~80 us), not one per look
VERIFIED_MEMO = 4096
# (records are checked on the event loop and on the validating thread: only single set operations,
# each atomic, and a full memo starts over rather than evicting in order)
_verified: set[bytes] = set()


class RecordError(ValueError):
    """Bytes that are not a valid record; ``reason`` is a short code for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RecordFormat:
    """One kind of record: ``[domain, *fields]`` with ``fields`` fields, decoded within these bounds.

    Every refusal raises ``error`` (a :class:`RecordError`): reason ``malformed`` for bytes that do not
    decode or are not ``[domain, *fields]``, ``bad_signature`` (or ``bad_signature_reason``) for a
    signature that does not verify.
    """

    domain: str
    fields: int  # after the domain tag
    max_bytes: int  # of the body, and of the signed pair
    max_depth: int
    error: type[RecordError] = RecordError
    max_str_len: int = 1 << 16
    max_bin_len: int | None = None
    max_array_len: int = 1 << 16
    max_map_len: int = 1 << 12
    bad_signature_reason: str = "bad_signature"

    def body(self, *fields: Any) -> bytes:
        """The canonical encoding ``[domain, *fields]``."""
        if len(fields) != self.fields:
            raise ValueError(f"{self.domain} has {self.fields} fields, got {len(fields)}")
        return msgpack.packb([self.domain, *fields], use_bin_type=True)

    def fields_of(self, body: bytes) -> list[Any]:
        """The fields after the domain tag of an untrusted ``body``; the caller checks their types."""
        try:
            decoded = bounded_unpackb(
                body,
                self.max_bytes,
                self.max_depth,
                max_str_len=self.max_str_len,
                max_bin_len=self.max_bin_len,
                max_array_len=self.max_array_len,
                max_map_len=self.max_map_len,
            )
        except WireError as e:
            raise self.error("malformed", str(e)) from None
        if type(decoded) is not list or len(decoded) != self.fields + 1 or decoded[0] != self.domain:
            raise self.error("malformed", "wrong domain or field count")
        return decoded[1:]

    def sign(self, identity: NodeIdentity, signer: bytes, body: bytes) -> bytes:
        """``pack_pair(body, signature)``; only the key the record names (``signer``) signs it."""
        if identity.public_key != signer:
            raise ValueError(f"{self.domain}: only the key a record names signs it")
        return pack_pair(body, identity.sign(body))

    def open(self, data: bytes) -> tuple[list[Any], bytes, bytes]:
        """``(fields, body, signature)`` of untrusted signed ``data``. The signature is not checked yet:
        the caller checks the fields first, then :meth:`check_signature` by the key they name."""
        try:
            body, signature = unpack_pair(data, self.max_bytes)
        except WireError as e:
            raise self.error("malformed", str(e)) from None
        return self.fields_of(body), body, signature

    def check_signature(self, signer: bytes, signature: bytes, body: bytes) -> None:
        key = hashlib.sha256(b"%d:%b%b%b" % (len(signer), signer, signature, body)).digest()
        if key in _verified:
            return
        if not verify(signer, signature, body):
            raise self.error(self.bad_signature_reason)
        if len(_verified) >= VERIFIED_MEMO:
            _verified.clear()
        _verified.add(key)
