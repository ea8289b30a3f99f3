"""Validation of received updates: every check, cheapest first, one reason code per rejection.

Order: size and nesting (bounded decode) -> domain tag -> types/canonical form -> signature ->
run -> round window -> author admitted -> author banned -> duplicate -> rate limit -> equivocation ->
base known -> replay -> a revert's check against the node's history (``check_revert``) ->
tensor names/shapes -> parameter groups (frozen, rank, density) -> indices -> finite values -> L2 norm
(of the expanded delta, for low-rank entries). Payloads (indices, values, factors) are decoded only after
every header check has passed.

State (in memory): per-author sequence high-water marks, the accepted update id per
(author, round), the distinct signed ids seen per (author, round) (at most the rate limit of them),
equivocation evidence. State changes only when an update is accepted, except the signed ids seen
(counted for the rate limit before the costly checks) and equivocation evidence, which is recorded
when it is found.

Bans and the rate limit come from outside (``is_banned``: the node's ban registry,
potluck.defence.bans; ``max_per_author_round``: a node setting, see ``NodeConfig``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from potluck.updates.codec import DecodeLimits, ParsedUpdate, SignedUpdate, parse_update
from potluck.updates.lowrank import EncodedLowRank
from potluck.updates.reasons import Reason, UpdateRejected

__all__ = ["EquivocationSeen", "UpdateValidator", "ValidationContext"]


@dataclass(frozen=True)
class ValidationContext:
    """What a node knows about its run right now (replace it with ``dataclasses.replace`` each round)."""

    run: str
    round: int
    shapes: dict[str, tuple[int, ...]]  # the model's tensors; an update may touch any subset
    known_bases: frozenset[str]  # version hashes (hex) updates may be based on
    admitted: frozenset[bytes] | None = None  # author public keys; None = open run
    max_norm: float | None = None  # bound on the L2 norm of the whole (dequantized) delta
    rounds_behind: int = 0  # accept rounds in [round - rounds_behind, round + rounds_ahead]
    rounds_ahead: int = 0
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    # parameter groups (potluck.groups), resolved per tensor name by the node
    frozen: frozenset[str] = frozenset()  # an update touching one is frozen_tensor
    max_rank: int = 64  # of a low-rank entry, unless rank_limits names the tensor
    rank_limits: Mapping[str, int] = field(default_factory=dict)
    density_limits: Mapping[str, float] = field(default_factory=dict)  # nnz <= ceil(limit * numel)
    # a revert (an update with ``reverts``): raises UpdateRejected revert_* (vcs/revert.validation_hook);
    # None: this validator refuses reverts (revert_unsupported)
    check_revert: Callable[[ParsedUpdate], None] | None = None
    # under clock pacing, the round the clock says it is: an update for it is on time even while the node
    # has not moved on yet (its loop held by a catch-up or a busy CPU); None: ``round`` alone decides
    round_now: Callable[[], int] | None = None


@dataclass(frozen=True)
class EquivocationSeen:
    """What the validator saw: ``author`` signed ``first_id`` (accepted) and then ``second_id`` for one
    round. The claim other nodes check is built from it (potluck.defence.evidence.Equivocation)."""

    author: bytes
    round: int
    first_id: str
    second_id: str


class UpdateValidator:
    """Checks received updates against a :class:`ValidationContext`; never raises anything but
    :class:`UpdateRejected`. ``counters`` (reason -> count, plus "accepted") is for ``status``."""

    def __init__(
        self,
        context: ValidationContext,
        *,
        is_banned: Callable[[bytes], bool] | None = None,
        max_per_author_round: int | None = None,
        is_past_version: Callable[[str], bool] | None = None,
    ) -> None:
        """``is_banned(author public key)``: reject that author's updates as ``banned``.
        ``is_past_version(version)``: an update on a base that is not a known one but an earlier version
        of the node's history is ``stale_base`` (else ``unknown_base``).
        ``max_per_author_round``: check at most this many distinct signed updates per (author, round)
        past the signature; more are ``rate_limited`` before anything costly (None: no limit)."""
        self.context = context
        self.is_banned = is_banned or (lambda author: False)
        self.is_past_version = is_past_version or (lambda version: False)
        self.max_per_author_round = max_per_author_round
        self.signed_ids: dict[tuple[bytes, int], set[str]] = {}  # (author, round) -> ids seen signed
        self.counters: dict[str, int] = {"accepted": 0} | {r.value: 0 for r in Reason}
        self.high_water: dict[bytes, int] = {}
        self.round_ids: dict[tuple[bytes, int], str] = {}
        self.accepted_ids: dict[str, int] = {}  # id -> round
        self.equivocations: list[EquivocationSeen] = []
        self.offences: dict[bytes, int] = {}  # author -> equivocations seen

    def validate(self, data: bytes) -> SignedUpdate:
        """Return the decoded update if it passes every check, else raise (and count) the first failure."""
        try:
            signed = self._validate(data)
        except UpdateRejected as e:
            self.counters[e.reason.value] += 1
            raise
        except Exception as e:  # a bug must cost a counter and a log line, never a crash
            self.counters[Reason.MALFORMED.value] += 1
            raise UpdateRejected(Reason.MALFORMED, f"unexpected {type(e).__name__}: {e}") from None
        self.counters["accepted"] += 1
        return signed

    def forget_before(self, round_: int) -> None:
        """Drop per-round ids of rounds before ``round_`` (bounded memory; high-water marks stay)."""
        self.round_ids = {key: uid for key, uid in self.round_ids.items() if key[1] >= round_}
        self.signed_ids = {key: ids for key, ids in self.signed_ids.items() if key[1] >= round_}
        self.accepted_ids = {uid: r for uid, r in self.accepted_ids.items() if r >= round_}

    def budget_spent(self, author: bytes, round_: int) -> bool:
        """Whether ``author`` used up its distinct updates for ``round_`` (the exchange stops fetching)."""
        limit = self.max_per_author_round
        return limit is not None and len(self.signed_ids.get((author, round_), ())) >= limit

    def ids_by(self, round_: int) -> dict[str, bytes]:
        """update id -> author of the validly signed updates seen for ``round_`` (within the limit)."""
        items = list(self.signed_ids.items())  # one C call each: safe beside the validating thread
        return {uid: author for (author, r), ids in items if r == round_ for uid in tuple(ids)}

    def _validate(self, data: bytes) -> SignedUpdate:
        ctx = self.context
        p = parse_update(data, ctx.limits)  # oversized, too_deep, malformed, bad_domain, bad_signature
        self._check_header(p, ctx)
        ids = self.signed_ids.setdefault((p.author, p.round), set())
        limit = self.max_per_author_round
        if p.update_id not in ids and (limit is None or len(ids) < limit):
            ids.add(p.update_id)
        if self.is_banned(p.author):
            raise UpdateRejected(Reason.BANNED, p.author.hex())
        if p.update_id in self.accepted_ids:
            raise UpdateRejected(Reason.DUPLICATE, p.update_id)
        if p.update_id not in ids:
            raise UpdateRejected(
                Reason.RATE_LIMITED, f"{p.author.hex()} sent over {limit} updates for round {p.round}"
            )
        self._check_context(p, ctx)
        if p.reverts:
            if ctx.check_revert is None:
                raise UpdateRejected(Reason.REVERT_UNSUPPORTED, "this node does not take reverts")
            ctx.check_revert(p)
        self._check_shapes(p, ctx)
        self._check_groups(p, ctx)
        signed = p.decode()  # bad_indices, non_finite
        if ctx.max_norm is not None:
            norm = math.sqrt(
                sum(float(np.dot(v, v)) for v in (t.values.astype(np.float64) for t in signed.update.tensors))
            )
            if not norm <= ctx.max_norm:
                raise UpdateRejected(Reason.NORM_EXCEEDED, f"L2 norm {norm:.6g} > {ctx.max_norm:.6g}")
        self._accept(p)
        return signed

    @staticmethod
    def _check_header(p: ParsedUpdate, ctx: ValidationContext) -> None:
        if p.run != ctx.run:
            raise UpdateRejected(Reason.WRONG_RUN, f"run {p.run[:80]!r}")
        if p.round < ctx.round - ctx.rounds_behind:
            raise UpdateRejected(Reason.STALE_ROUND, f"round {p.round} < {ctx.round - ctx.rounds_behind}")
        newest = max(ctx.round, ctx.round_now()) if ctx.round_now is not None else ctx.round
        if p.round > newest + ctx.rounds_ahead:
            raise UpdateRejected(Reason.FUTURE_ROUND, f"round {p.round} > {newest + ctx.rounds_ahead}")
        if ctx.admitted is not None and p.author not in ctx.admitted:
            raise UpdateRejected(Reason.NOT_ADMITTED, p.author.hex())

    def _check_context(self, p: ParsedUpdate, ctx: ValidationContext) -> None:
        first = self.round_ids.get((p.author, p.round))
        if first is not None and first != p.update_id:  # signed for the same round: whatever its base
            self.equivocations.append(EquivocationSeen(p.author, p.round, first, p.update_id))
            self.offences[p.author] = self.offences.get(p.author, 0) + 1
            raise UpdateRejected(
                Reason.EQUIVOCATION, f"{p.author.hex()} round {p.round}: {first} and {p.update_id}"
            )
        if p.base not in ctx.known_bases:
            if self.is_past_version(p.base):
                current = ", ".join(sorted(b[:16] for b in ctx.known_bases)) or "none"
                raise UpdateRejected(
                    Reason.STALE_BASE,
                    f"built on {p.base[:16]}, an earlier version; updates now build on {current}",
                )
            raise UpdateRejected(Reason.UNKNOWN_BASE, p.base)
        mark = self.high_water.get(p.author)
        if mark is not None and p.seq <= mark:
            raise UpdateRejected(Reason.REPLAYED, f"seq {p.seq} <= {mark}")

    @staticmethod
    def _check_shapes(p: ParsedUpdate, ctx: ValidationContext) -> None:
        for t in p.tensors:
            expected = ctx.shapes.get(t.name)
            if expected is None:
                raise UpdateRejected(Reason.SHAPE_MISMATCH, f"unknown tensor {t.name[:80]!r}")
            if tuple(expected) != t.shape:
                raise UpdateRejected(Reason.SHAPE_MISMATCH, f"{t.name}: {t.shape} != {tuple(expected)}")

    @staticmethod
    def _check_groups(p: ParsedUpdate, ctx: ValidationContext) -> None:
        for t in p.tensors:
            if t.name in ctx.frozen:
                raise UpdateRejected(Reason.FROZEN_TENSOR, f"{t.name} is in a frozen parameter group")
            if isinstance(t, EncodedLowRank):
                limit = ctx.rank_limits.get(t.name, ctx.max_rank)
                if t.rank > limit:
                    raise UpdateRejected(Reason.RANK_EXCEEDED, f"{t.name}: rank {t.rank} > {limit}")
                continue
            density = ctx.density_limits.get(t.name)
            if density is not None and t.nnz > max(1, math.ceil(density * t.numel)):
                raise UpdateRejected(
                    Reason.DENSITY_EXCEEDED, f"{t.name}: {t.nnz} of {t.numel} entries > {density:g}"
                )

    def _accept(self, p: ParsedUpdate) -> None:
        self.high_water[p.author] = p.seq
        self.round_ids[(p.author, p.round)] = p.update_id
        self.accepted_ids[p.update_id] = p.round
