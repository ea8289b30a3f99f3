"""Signed peer records: how a node tells its run who it is and where to reach it (pure code).

A record lives in the DHT under ``potluck/<run>/peers`` with subkey ``potluck:ed25519:<public key>``.
Its value is canonical msgpack of the fields below; the DHT validator appends an Ed25519
signature that covers the DHT key, subkey, value and expiration time, so a record can't be
moved to another run, another node or a longer life.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass

import msgpack

from potluck.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, peer_id_of, verify

SUBKEY_PREFIX = b"potluck:ed25519:"
SIGNATURE_MARKER = b"[potluck-sig:ed25519]"
SIGNING_DOMAIN = b"potluck/peer-record/v1\x00"
MAX_RECORD_BYTES = 4096  # a DHT record of ours, signature included; hivemind is safe below 15 KB
MAX_TTL_S = 3600.0  # a record may not ask to live longer than this past its signing time
MAX_CLOCK_SKEW_S = 60.0
_MAX_ADDRS = 16
_MAX_STR = 512


class RecordReason(enum.StrEnum):
    """Why the DHT validator refused a record; each is counted and shown by `potluck status`."""

    UNSIGNED = "unsigned"
    BAD_SUBKEY = "bad_subkey"
    OVERSIZED = "oversized"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed"
    PEER_ID_MISMATCH = "peer_id_mismatch"
    BAD_EXPIRATION = "bad_expiration"
    REPLAYED = "replayed"
    TOO_DEEP = "too_deep"  # a DHT message nested deep enough to crash hivemind's decoder (swarm/guard.py)


class RecordRejected(Exception):
    def __init__(self, reason: RecordReason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


def peers_key(run: str) -> str:
    return f"potluck/{run}/peers"


def subkey_for(public_key: bytes) -> bytes:
    return SUBKEY_PREFIX + public_key


@dataclass(frozen=True)
class PeerRecord:
    peer_id: str
    addrs: tuple[str, ...]
    role: str
    agent: str
    round: int
    model_version: str
    timestamp: float  # unix time when signed
    sequence: int  # strictly increasing per node, across restarts (time-based)

    def encode(self) -> bytes:
        fields = asdict(self)
        fields["addrs"] = list(self.addrs)
        return msgpack.packb(dict(sorted(fields.items())), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> PeerRecord:
        """Parse a record value, bounded in size and shape; raises RecordRejected(MALFORMED)."""
        if len(data) > MAX_RECORD_BYTES:
            raise RecordRejected(RecordReason.OVERSIZED, f"{len(data)} bytes")
        try:
            # flat map of scalars and one list of strings: the limits make deeper or bigger input fail fast
            obj = msgpack.unpackb(
                data,
                raw=False,
                max_str_len=_MAX_STR,
                max_bin_len=0,
                max_array_len=_MAX_ADDRS,
                max_map_len=16,
                max_ext_len=0,
                strict_map_key=True,
            )
        except Exception as e:  # msgpack raises many types on hostile input
            raise RecordRejected(RecordReason.MALFORMED, f"not msgpack: {type(e).__name__}") from None
        if not isinstance(obj, dict) or set(obj) != _FIELDS:
            raise RecordRejected(RecordReason.MALFORMED, "wrong fields")
        addrs = obj["addrs"]
        ok = (
            isinstance(obj["peer_id"], str)
            and isinstance(addrs, list)
            and all(isinstance(a, str) for a in addrs)
            and isinstance(obj["role"], str)
            and isinstance(obj["agent"], str)
            and type(obj["round"]) is int
            and obj["round"] >= 0
            and isinstance(obj["model_version"], str)
            and isinstance(obj["timestamp"], float)
            and math.isfinite(obj["timestamp"])
            and type(obj["sequence"]) is int
            and obj["sequence"] >= 0
        )
        if not ok:
            raise RecordRejected(RecordReason.MALFORMED, "wrong field types")
        return cls(**{**obj, "addrs": tuple(addrs)})


_FIELDS = {f for f in PeerRecord.__dataclass_fields__}


def signing_message(key: bytes, subkey: bytes, value: bytes, expiration_time: float) -> bytes:
    """What a node signs for a DHT record: the record's every field, under a domain tag."""
    return SIGNING_DOMAIN + msgpack.packb([key, subkey, value, float(expiration_time)], use_bin_type=True)


@dataclass(frozen=True)
class CheckedRecord:
    public_key: bytes
    value: bytes  # the signed value without its signature
    record: PeerRecord


def check_signed_record(
    key: bytes, subkey: bytes, value: bytes, expiration_time: float, *, now: float
) -> CheckedRecord:
    """Verify one signed DHT record of ours (subkey and value as hivemind serialized them).

    Raises RecordRejected with the first reason that applies, cheapest checks first.
    """
    if len(value) > MAX_RECORD_BYTES:
        raise RecordRejected(RecordReason.OVERSIZED, f"{len(value)} bytes")
    public_key = parse_subkey(subkey)
    if public_key is None:
        raise RecordRejected(RecordReason.BAD_SUBKEY)
    body, signature = split_signature(value)
    if signature is None:
        raise RecordRejected(RecordReason.UNSIGNED)
    if not verify(public_key, signature, signing_message(key, subkey, body, expiration_time)):
        raise RecordRejected(RecordReason.BAD_SIGNATURE)
    try:
        payload = msgpack.unpackb(
            body,
            raw=False,
            max_str_len=0,
            max_array_len=0,
            max_map_len=0,
            max_ext_len=0,
            max_bin_len=MAX_RECORD_BYTES,
        )
    except Exception:
        raise RecordRejected(RecordReason.MALFORMED, "value is not a msgpack bin") from None
    if not isinstance(payload, bytes):
        raise RecordRejected(RecordReason.MALFORMED, "value is not a msgpack bin")
    record = PeerRecord.decode(payload)
    if record.peer_id != peer_id_of(public_key):
        raise RecordRejected(RecordReason.PEER_ID_MISMATCH, record.peer_id)
    if not (record.timestamp - MAX_CLOCK_SKEW_S <= expiration_time <= record.timestamp + MAX_TTL_S) or (
        expiration_time > now + MAX_TTL_S + MAX_CLOCK_SKEW_S
    ):
        raise RecordRejected(RecordReason.BAD_EXPIRATION, f"expires {expiration_time - now:.0f}s from now")
    return CheckedRecord(public_key, body, record)


def split_signature(value: bytes) -> tuple[bytes, bytes | None]:
    """(value, signature) of a signed record value; (value, None) if it carries no signature."""
    cut = len(value) - SIGNATURE_SIZE - len(SIGNATURE_MARKER)
    if cut < 0 or value[cut : cut + len(SIGNATURE_MARKER)] != SIGNATURE_MARKER:
        return value, None
    return value[:cut], value[cut + len(SIGNATURE_MARKER) :]


def public_key_in(subkey: bytes) -> bytes | None:
    """The public key named by a (deserialized) subkey of ours, or None if it isn't one."""
    if len(subkey) != len(SUBKEY_PREFIX) + PUBLIC_KEY_SIZE or not subkey.startswith(SUBKEY_PREFIX):
        return None
    return subkey[len(SUBKEY_PREFIX) :]


def parse_subkey(serialized: bytes) -> bytes | None:
    """The public key in a subkey as hivemind serialized it (a msgpack bin8), or None."""
    header = b"\xc4" + bytes([len(SUBKEY_PREFIX) + PUBLIC_KEY_SIZE])
    return public_key_in(serialized[len(header) :]) if serialized.startswith(header) else None


def is_ours(subkey: bytes) -> bool:
    return SUBKEY_PREFIX in subkey
