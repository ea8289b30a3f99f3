import contextlib
import tracemalloc

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from potluck.wire import Malformed, Oversized, TooDeep, WireError, bounded_unpackb

LIMITS = {"max_bytes": 1 << 20, "max_depth": 8}


def test_round_trip():
    obj = ["a", b"\x00" * 300, [1, -2, 3.5, None, True], {"k": [b"v"]}, 2**63 - 1]
    assert bounded_unpackb(msgpack.packb(obj), **LIMITS) == obj


def test_deep_nesting_rejected_without_recursion():
    data = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(TooDeep):
        bounded_unpackb(data, max_bytes=1 << 20, max_depth=8)
    ok = b"\x91" * 8 + b"\xc0"
    assert bounded_unpackb(ok, max_bytes=100, max_depth=8) is not None
    with pytest.raises(TooDeep):
        bounded_unpackb(b"\x91" * 9 + b"\xc0", max_bytes=100, max_depth=8)
    with pytest.raises(TooDeep):  # empty containers count too
        bounded_unpackb(b"\x91" * 8 + b"\x90", max_bytes=100, max_depth=8)


def test_huge_declared_lengths_cost_no_memory():
    cases = [
        b"\xc6\xff\xff\xff\xff" + b"x" * 10,  # bin32 claiming 4 GiB
        b"\xdb\xff\xff\xff\xff" + b"x" * 10,  # str32
        b"\xdd\xff\xff\xff\xff" + b"\xc0" * 10,  # array32 with 4G elements
        b"\xdf\xff\xff\xff\xff" + b"\xc0" * 10,  # map32
    ]
    tracemalloc.start()
    try:
        for data in cases:
            with pytest.raises(WireError):
                bounded_unpackb(
                    data,
                    max_bytes=1 << 40,
                    max_depth=8,
                    max_bin_len=1 << 40,
                    max_str_len=1 << 40,
                    max_array_len=1 << 40,
                    max_map_len=1 << 40,
                )
            with pytest.raises(Oversized):
                bounded_unpackb(data, **LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\xd4\x01\x00", b"\xc7\x01\x05x", b"\x92\x01", b"\x01\x02", b"\xa3ab", b"\xa2\xff\xfe"],
)
def test_malformed(data: bytes):
    with pytest.raises(Malformed):
        bounded_unpackb(data, **LIMITS)


def test_oversized_total_and_limits():
    with pytest.raises(Oversized):
        bounded_unpackb(msgpack.packb(b"x" * 200), max_bytes=100, max_depth=2)
    with pytest.raises(Oversized):
        bounded_unpackb(msgpack.packb(list(range(20))), max_bytes=100, max_depth=2, max_array_len=10)
    with pytest.raises(Malformed):
        bounded_unpackb("not bytes", **LIMITS)  # type: ignore[arg-type]


def test_every_truncation_is_rejected():
    data = msgpack.packb([b"abc", {"x": [1, 2.0, "s"]}, 70000, -3])
    for cut in range(len(data)):
        with pytest.raises(Malformed):
            bounded_unpackb(data[:cut], **LIMITS)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_wire_errors(data: bytes):
    with contextlib.suppress(WireError):
        bounded_unpackb(data, max_bytes=1 << 10, max_depth=4)
