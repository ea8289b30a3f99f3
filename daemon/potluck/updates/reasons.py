"""Why an update was rejected: one enum of reason codes and the one exception that carries them."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Reason codes, in the order the validator checks them (cheapest first)."""

    OVERSIZED = "oversized"  # message or a field above a size limit
    TOO_DEEP = "too_deep"  # msgpack nesting above the bound
    MALFORMED = "malformed"  # not msgpack, wrong types, wrong lengths, non-canonical bytes
    BAD_DOMAIN = "bad_domain"  # domain tag is not potluck/update/v1
    BAD_SIGNATURE = "bad_signature"
    BANNED = "banned"  # the author is banned for the run (potluck.defence.bans), e.g. for equivocation
    DUPLICATE = "duplicate"  # this exact update was already accepted
    RATE_LIMITED = "rate_limited"  # the author sent more distinct updates for the round than a node checks
    WRONG_RUN = "wrong_run"
    STALE_ROUND = "stale_round"
    FUTURE_ROUND = "future_round"
    STALE_BASE = "stale_base"  # built on an earlier version of this node's history, not the current one
    UNKNOWN_BASE = "unknown_base"
    NOT_ADMITTED = "not_admitted"
    EQUIVOCATION = "equivocation"  # a second, different update by the same author for the same round
    REPLAYED = "replayed"  # sequence number not above the author's high-water mark
    SHAPE_MISMATCH = "shape_mismatch"  # tensor names/shapes differ from the model's
    FROZEN_TENSOR = "frozen_tensor"  # touches a tensor of a frozen parameter group (potluck.groups)
    RANK_EXCEEDED = "rank_exceeded"  # a low-rank entry above min(rows, cols) or the run's/group's max_rank
    DENSITY_EXCEEDED = "density_exceeded"  # a sparse entry denser than its group's max_density
    BAD_INDICES = "bad_indices"  # index payload undecodable, unsorted, duplicate or out of range
    NON_FINITE = "non_finite"
    NORM_EXCEEDED = "norm_exceeded"
    # a revert (an update with ``reverts``): checked against the node's history (vcs/revert.py)
    REVERT_UNSUPPORTED = "revert_unsupported"  # not a weighted-mean run merged gathered, or no history hook
    REVERT_NOT_ALLOWED = "revert_not_allowed"  # the manifest's revert rule does not admit the author
    REVERT_UNKNOWN_UPDATE = "revert_unknown_update"  # names an update this node does not hold
    REVERT_NOT_MERGED = "revert_not_merged"  # names an update no earlier commit merged with a weight
    REVERT_ALREADY_REVERTED = "revert_already_reverted"  # names an update an earlier revert took out


class UpdateRejected(Exception):
    """An update that must not be used, with a reason code for counters and a detail for logs."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
