"""The decoder and validator on hostile input: only UpdateRejected, bounded memory."""

import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from potluck.identity import NodeIdentity
from potluck.updates.codec import DecodeLimits, decode_update, encode_update
from potluck.updates.reasons import Reason, UpdateRejected
from potluck.updates.validation import UpdateValidator, ValidationContext
from tests.updates.builders import BASE, RUN, SHAPES, body_of, build, sign_body

IDENTITY = NodeIdentity.generate()
VALID = encode_update(build(IDENTITY), IDENTITY, "int8")
VALID_BODY = body_of(VALID)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_rejected(data: bytes) -> Reason | None:
    """Decode and validate; anything but UpdateRejected fails the test."""
    validator = UpdateValidator(ValidationContext(RUN, 5, SHAPES, frozenset({BASE}), max_norm=1e3))
    reason = None
    try:
        decode_update(data)
    except UpdateRejected as e:
        reason = e.reason
    try:
        validator.validate(data)
    except UpdateRejected as e:
        assert e.reason is not None
    return reason


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=20,
)  # fmt: skip


def test_truncation_at_every_byte():
    for cut in range(len(VALID)):
        assert _only_rejected(VALID[:cut]) in (Reason.MALFORMED, Reason.OVERSIZED)


def test_deep_nesting_as_bytes():
    assert _only_rejected(b"\x91" * 100_000 + b"\xc0") is Reason.TOO_DEEP
    assert _only_rejected(b"\xdc\xff\xff" * 50_000) in (Reason.TOO_DEEP, Reason.OVERSIZED)
    # deep nesting inside a correctly signed body
    assert _only_rejected(sign_body(b"\x91" * 100_000 + b"\xc0", IDENTITY)) is Reason.TOO_DEEP


@pytest.mark.parametrize(
    "data",
    [
        b"\x92\xc6\xff\xff\xff\xff",  # envelope whose body bin32 claims 4 GiB
        b"\x92\xc6\xff\xff\xff\xff" + b"\x00" * 1000,
        b"\xdd\xff\xff\xff\xff" + b"\xc0" * 100,  # array32 of 4G elements
        sign_body(b"\x99\xb1potluck/update/v1\xc6\xff\xff\xff\xf0", IDENTITY),  # huge bin inside the body
        sign_body(b"\xdb\xff\xff\xff\xff" + b"a" * 64, IDENTITY),  # str32 claiming 4 GiB
    ],
)
def test_huge_declared_length_bounded_memory(data):
    tracemalloc.start()
    try:
        assert _only_rejected(data) in (Reason.MALFORMED, Reason.OVERSIZED)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20


def test_huge_declared_shape_is_rejected_cheaply():
    body = [list(x) if isinstance(x, list) else x for x in VALID_BODY]
    entry = list(body[8][0])
    entry[1] = [1 << 40, 1 << 40]  # 2**80 elements
    body[8] = [entry]
    tracemalloc.start()
    try:
        assert _only_rejected(sign_body(body, IDENTITY)) in (Reason.OVERSIZED, Reason.MALFORMED)
        entry[1], entry[2], entry[3] = [1 << 33], 20, 1  # bitmap for 8G elements: must be 1 GiB long
        entry[6], entry[7] = b"\x01" * 20, b"\x00\x00\x80\x3f"
        body[8] = [entry]
        assert _only_rejected(sign_body(body, IDENTITY)) is Reason.BAD_INDICES
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20


def _may_be_valid(original: Any, wrong: Any) -> bool:
    """Another str or array can be valid in a str/array field; a negative or 64-bit int never is."""
    return type(original) is type(wrong) and type(wrong) in (str, list)


WRONG_TYPES: list[Any] = [None, True, -1, 2**64 - 1, 1.5, "x", b"", b"\x00" * 32, [], [1, 2], {"a": 1}]


@pytest.mark.parametrize("field", range(1, 9))
def test_wrong_type_in_every_body_field(field):
    for wrong in WRONG_TYPES:
        body = list(VALID_BODY)
        if _may_be_valid(body[field], wrong) or (field in (3, 4) and wrong == b"\x00" * 32):
            continue
        body[field] = wrong
        assert _only_rejected(sign_body(body, IDENTITY)) is not None, (field, wrong)


@pytest.mark.parametrize("field", range(8))
def test_wrong_type_in_every_tensor_field(field):
    for wrong in WRONG_TYPES:
        body = list(VALID_BODY)
        entry = list(body[8][1])
        if _may_be_valid(entry[field], wrong):
            continue
        entry[field] = wrong
        body[8] = [body[8][0], entry]
        assert _only_rejected(sign_body(body, IDENTITY)) is not None, (field, wrong)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(data):
    assert _only_rejected(data) is not None


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_byte_mutations_of_a_valid_update(mutations):
    data = bytearray(VALID)
    for pos, value in mutations:
        data[pos] = value
    if bytes(data) != VALID:
        _only_rejected(bytes(data))


@FUZZ
@given(msgpack_values)
def test_signed_arbitrary_bodies(body):
    assert _only_rejected(sign_body(msgpack.packb(body), IDENTITY)) is not None


@FUZZ
@given(st.integers(1, 8), msgpack_values)
def test_signed_valid_bodies_with_one_field_replaced(field, value):
    body = list(VALID_BODY)
    body[field] = value
    _only_rejected(sign_body(body, IDENTITY))


@FUZZ
@given(st.integers(0, 7), msgpack_values)
def test_signed_valid_bodies_with_one_tensor_field_replaced(field, value):
    body = list(VALID_BODY)
    entry = list(body[8][0])
    entry[field] = value
    body[8] = [entry, body[8][1]]
    _only_rejected(sign_body(body, IDENTITY))


@FUZZ
@given(st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=30))
def test_arbitrary_index_deltas(deltas):
    from potluck.updates.indices import varint_encode

    body = list(VALID_BODY)
    entry = list(body[8][1])  # "layer.weight", 512 elements
    entry[2], entry[3] = len(deltas), 0  # delta-varint
    entry[4] = varint_encode(__import__("numpy").array(deltas, "uint64"))
    entry[6] = b"\x01" * len(deltas)
    entry[7] = b"\x00\x00\x80\x3f" * (-(-len(deltas) // 256))
    body[8] = [body[8][0], entry]
    reason = _only_rejected(sign_body(body, IDENTITY))
    total, ok = 0, True
    for i, d in enumerate(deltas):
        total += d
        ok &= (d > 0 or i == 0) and total < 512
    assert (reason is None) == ok


def test_limits_are_configurable():
    with pytest.raises(UpdateRejected) as info:
        decode_update(VALID, DecodeLimits(max_tensors=1))
    assert info.value.reason in (Reason.OVERSIZED, Reason.MALFORMED)


SIGN_BODY = body_of(encode_update(build(IDENTITY), IDENTITY, "sign"))


@FUZZ
@given(
    st.sampled_from([4, 6, 7]),  # Rice indices, sign values, scales of "layer.weight"
    st.lists(st.tuples(st.integers(0, 1 << 10), st.integers(0, 255)), max_size=6),
    st.integers(-2, 2),
)
def test_signed_rice_and_sign_payloads_with_bytes_changed(field, mutations, resize):
    body = list(SIGN_BODY)
    entry = list(body[8][1])
    assert (entry[3], entry[5]) == (2, 2)  # Rice, sign
    data = bytearray(entry[field])
    for pos, value in mutations:
        data[pos % len(data)] = value
    data = data[: len(data) + resize] if resize < 0 else data + bytes(resize)
    entry[field] = bytes(data)
    body[8] = [body[8][0], entry]
    reason = _only_rejected(sign_body(body, IDENTITY))  # anything but UpdateRejected fails
    if resize and field != 4:
        assert reason is Reason.MALFORMED  # value and scale lengths are fixed by nnz
    if resize > 0 and field == 4:
        assert reason is Reason.BAD_INDICES  # zero bytes after the last unary code
