"""Signed sparse updates: sparsify, quantize, encode/sign, decode/verify, validate, apply."""

from potluck.updates.apply import apply_update
from potluck.updates.codec import (
    DOMAIN,
    DecodeLimits,
    ParsedUpdate,
    SignedUpdate,
    SparseTensor,
    Update,
    decode_update,
    encode_update,
    parse_update,
)
from potluck.updates.reasons import Reason, UpdateRejected

__all__ = [
    "DOMAIN",
    "DecodeLimits",
    "ParsedUpdate",
    "Reason",
    "SignedUpdate",
    "SparseTensor",
    "Update",
    "UpdateRejected",
    "apply_update",
    "decode_update",
    "encode_update",
    "parse_update",
]
