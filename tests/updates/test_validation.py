import dataclasses

import numpy as np
import pytest

from potluck.identity import NodeIdentity
from potluck.updates.codec import DecodeLimits, encode_update
from potluck.updates.indices import varint_encode
from potluck.updates.reasons import Reason, UpdateRejected
from potluck.updates.validation import UpdateValidator, ValidationContext
from tests.updates.builders import BASE, RUN, SHAPES, body_of, build, sign_body


def _context(**overrides) -> ValidationContext:
    fields = {"run": RUN, "round": 5, "shapes": SHAPES, "known_bases": frozenset({BASE})} | overrides
    return ValidationContext(**fields)


def _reject(validator: UpdateValidator, data: bytes, reason: Reason) -> UpdateRejected:
    before = dict(validator.counters)
    with pytest.raises(UpdateRejected) as info:
        validator.validate(data)
    assert info.value.reason is reason, info.value
    assert validator.counters[reason.value] == before[reason.value] + 1
    assert sum(validator.counters.values()) == sum(before.values()) + 1  # only that counter moved
    return info.value


def _tensor_entry(body: list, name: str) -> list:
    return next(e for e in body[8] if e[0] == name)


def test_accepts_valid_update(valid):
    v = UpdateValidator(_context(max_norm=1e6))
    signed = v.validate(valid())
    assert v.counters["accepted"] == 1
    assert {t.name for t in signed.update.tensors} == {"embed", "layer.weight"}


def test_oversized(valid):
    data = valid()
    _reject(UpdateValidator(_context(limits=DecodeLimits(max_bytes=len(data) - 1))), data, Reason.OVERSIZED)


def test_too_deep(valid, identity):
    body = body_of(valid())
    nested: list = [0]
    for _ in range(50):
        nested = [nested]
    body[8] = nested
    _reject(UpdateValidator(_context()), sign_body(body, identity), Reason.TOO_DEEP)
    _reject(UpdateValidator(_context()), b"\x91" * 100_000 + b"\xc0", Reason.TOO_DEEP)


def test_malformed(valid, identity):
    v = UpdateValidator(_context())
    _reject(v, b"not msgpack at all", Reason.MALFORMED)
    body = body_of(valid())
    body[2] = "five"  # round as a string
    _reject(v, sign_body(body, identity), Reason.MALFORMED)


def test_bad_domain(valid, identity):
    body = body_of(valid())
    body[0] = "potluck/commit/v1"
    _reject(UpdateValidator(_context()), sign_body(body, identity), Reason.BAD_DOMAIN)


def test_bad_signature(valid):
    data = bytearray(valid())
    data[-1] ^= 1  # last byte of the signature
    _reject(UpdateValidator(_context()), bytes(data), Reason.BAD_SIGNATURE)
    other = NodeIdentity.generate()
    body = body_of(valid())
    # a valid signature, but by another key than the author's
    _reject(UpdateValidator(_context()), sign_body(body, other), Reason.BAD_SIGNATURE)


def test_duplicate(valid):
    v = UpdateValidator(_context())
    data = valid()
    v.validate(data)
    _reject(v, data, Reason.DUPLICATE)


def test_wrong_run(valid):
    _reject(UpdateValidator(_context()), valid(run="another-run"), Reason.WRONG_RUN)


def test_stale_and_future_round(valid):
    v = UpdateValidator(_context(rounds_behind=1, rounds_ahead=1))
    _reject(v, valid(round=3), Reason.STALE_ROUND)
    _reject(v, valid(round=7), Reason.FUTURE_ROUND)
    v.validate(valid(round=4, seq=1))
    v.validate(valid(round=6, seq=2))


def test_the_clocks_round_is_on_time_before_the_node_moves_on(valid):
    clock = [5]
    v = UpdateValidator(_context(round_now=lambda: clock[0]))
    _reject(v, valid(round=6, seq=1), Reason.FUTURE_ROUND)
    clock[0] = 6  # the clock says round 6 began; the node's context still says 5
    v.validate(valid(round=6, seq=2))
    v.validate(valid(round=5, seq=3))  # the round the node is still on stays open
    _reject(v, valid(round=7, seq=4), Reason.FUTURE_ROUND)


def test_unknown_base(valid):
    _reject(UpdateValidator(_context()), valid(base="cd" * 32), Reason.UNKNOWN_BASE)


def test_stale_base_is_an_earlier_version_of_the_nodes_history(valid):
    earlier = "cd" * 32
    validator = UpdateValidator(_context(), is_past_version=lambda version: version == earlier)
    error = _reject(validator, valid(base=earlier), Reason.STALE_BASE)
    assert earlier[:16] in error.detail and BASE[:16] in error.detail  # which base, and the current one
    _reject(validator, valid(base="ef" * 32), Reason.UNKNOWN_BASE)


def test_not_admitted(valid, identity):
    v = UpdateValidator(_context(admitted=frozenset({NodeIdentity.generate().public_key})))
    _reject(v, valid(), Reason.NOT_ADMITTED)
    v.context = dataclasses.replace(v.context, admitted=frozenset({identity.public_key}))
    v.validate(valid())


def test_replayed(valid):
    v = UpdateValidator(_context(rounds_ahead=1))
    v.validate(valid(round=5, seq=10))
    _reject(v, valid(round=6, seq=10), Reason.REPLAYED)
    _reject(v, valid(round=6, seq=3), Reason.REPLAYED)
    v.validate(valid(round=6, seq=11))


def test_equivocation(valid, identity):
    v = UpdateValidator(_context())
    first = v.validate(valid(seq=10))
    err = _reject(v, valid(seq=11, sample_count=999), Reason.EQUIVOCATION)
    (evidence,) = v.equivocations
    assert evidence.author == identity.public_key and evidence.round == 5
    assert evidence.first_id == first.update_id and evidence.second_id in err.detail
    assert v.offences[identity.public_key] == 1


def test_shape_mismatch(valid, identity):
    v = UpdateValidator(_context())
    body = body_of(valid())
    _tensor_entry(body, "embed")[1] = [8, 64]  # same numel, wrong shape
    _reject(v, sign_body(body, identity), Reason.SHAPE_MISMATCH)
    renamed = dataclasses.replace(build(identity).tensors[0], name="nope")
    _reject(v, valid(tensors=(renamed,)), Reason.SHAPE_MISMATCH)


@pytest.mark.parametrize("problem", ["duplicate", "out_of_range", "truncated", "bitmap_count"])
def test_bad_indices(valid, identity, problem):
    body = body_of(valid())
    entry = _tensor_entry(body, "layer.weight")  # nnz 20 of 512
    if problem == "duplicate":
        entry[4] = varint_encode(np.array([3] + [0] + [1] * 18, np.uint64))
    elif problem == "out_of_range":
        entry[4] = varint_encode(np.array([500] + [1] * 19, np.uint64))
    elif problem == "truncated":
        entry[4] = entry[4][:-1] + b"\x80"
    else:
        entry[3], entry[4] = 1, b"\xff" * 64  # bitmap with 512 bits set, nnz says 20
    _reject(UpdateValidator(_context()), sign_body(body, identity), Reason.BAD_INDICES)


@pytest.mark.parametrize("kind", ["fp16_nan", "fp16_inf", "int8_scale_inf", "int8_scale_nan"])
def test_non_finite(valid, identity, kind):
    values = "fp16" if kind.startswith("fp16") else "int8"
    body = body_of(valid(values))
    entry = _tensor_entry(body, "embed")
    if values == "fp16":
        v = np.frombuffer(entry[6], "<f2").copy()
        v[7] = np.nan if kind == "fp16_nan" else np.inf
        entry[6] = v.tobytes()
    else:
        s = np.frombuffer(entry[7], "<f4").copy()
        s[1] = np.inf if kind == "int8_scale_inf" else np.nan
        entry[7] = s.tobytes()
    _reject(UpdateValidator(_context()), sign_body(body, identity), Reason.NON_FINITE)


def test_norm_exceeded(valid, identity):
    update = build(identity)
    norm = np.sqrt(sum(float(np.sum(t.values.astype(np.float64) ** 2)) for t in update.tensors))
    data = encode_update(update, identity, "fp16")
    _reject(UpdateValidator(_context(max_norm=norm * 0.9)), data, Reason.NORM_EXCEEDED)
    UpdateValidator(_context(max_norm=norm * 1.01)).validate(data)


def test_every_reason_has_a_counter():
    v = UpdateValidator(_context())
    assert set(v.counters) == {r.value for r in Reason} | {"accepted"}


def test_state_is_pruned_by_round(valid):
    v = UpdateValidator(_context())
    v.validate(valid(seq=1))
    v.forget_before(6)
    assert not v.round_ids and not v.accepted_ids
    assert v.high_water  # replay protection survives


def test_banned_author_is_rejected_before_anything_costly(valid, identity):
    banned: set[bytes] = set()
    v = UpdateValidator(_context(), is_banned=banned.__contains__)
    v.validate(valid(seq=1, round=5))
    banned.add(identity.public_key)
    _reject(v, valid(seq=2), Reason.BANNED)
    _reject(v, valid(seq=1, round=5), Reason.BANNED)  # even what it already had accepted
    v.context = dataclasses.replace(v.context, admitted=frozenset())
    _reject(v, valid(seq=3), Reason.NOT_ADMITTED)  # admission is checked first


def test_rate_limit_counts_distinct_signed_updates_per_author_and_round(valid, identity):
    v = UpdateValidator(_context(max_norm=1e-9, rounds_ahead=1), max_per_author_round=2)
    _reject(v, valid(seq=1), Reason.NORM_EXCEEDED)  # costly check: counts towards the limit
    _reject(v, valid(seq=2), Reason.NORM_EXCEEDED)
    assert v.budget_spent(identity.public_key, 5) and not v.budget_spent(identity.public_key, 6)
    _reject(v, valid(seq=3), Reason.RATE_LIMITED)
    _reject(v, valid(seq=1), Reason.NORM_EXCEEDED)  # one it already counted is checked again
    other = NodeIdentity.generate()
    _reject(v, encode_update(build(other), other), Reason.NORM_EXCEEDED)  # others have their own budget
    _reject(v, valid(seq=4, round=6), Reason.NORM_EXCEEDED)  # and so has the next round
    assert set(v.ids_by(5).values()) == {identity.public_key, other.public_key}
    v.forget_before(6)
    assert not v.ids_by(5) and not v.budget_spent(identity.public_key, 5)


def test_equivocation_is_found_whatever_the_second_update_s_base(valid, identity):
    v = UpdateValidator(_context())
    v.validate(valid(seq=10))
    _reject(v, valid(seq=11, base="cd" * 32), Reason.EQUIVOCATION)


def _revert(identity: NodeIdentity, **overrides) -> bytes:
    fields = {"tensors": (), "sample_count": 0, "reverts": ("0a" * 32,)} | overrides
    return encode_update(build(identity, **fields), identity)


def test_a_revert_goes_through_the_context_hook_and_is_refused_without_one(identity):
    _reject(UpdateValidator(_context()), _revert(identity), Reason.REVERT_UNSUPPORTED)
    seen = []

    def refuse(p):
        seen.append(p.reverts)
        raise UpdateRejected(Reason.REVERT_NOT_MERGED, "no commit merged it")

    _reject(UpdateValidator(_context(check_revert=refuse)), _revert(identity), Reason.REVERT_NOT_MERGED)
    assert seen == [("0a" * 32,)]
    v = UpdateValidator(_context(check_revert=seen.append))
    assert v.validate(_revert(identity, seq=2)).update.reverts == ("0a" * 32,)
    # the header checks run first: a revert of another run never reaches the (costly) history check
    seen.clear()
    _reject(
        UpdateValidator(_context(check_revert=seen.append)), _revert(identity, run="other"), Reason.WRONG_RUN
    )
    assert seen == []
