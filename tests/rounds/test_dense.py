import numpy as np
import pytest

from potluck.rounds import dense, fixedpoint
from potluck.rounds.slices import BLOCK
from potluck.updates.codec import SparseTensor, Update


@pytest.mark.parametrize(
    ("low", "high", "wire"),
    [
        (-128, 127, "|i1"),
        (-129, 0, "<i2"),
        (0, 128, "<i2"),
        (-(2**15), 2**15 - 1, "<i2"),
        (0, 2**15, "<i4"),
        (-(2**31), 2**31 - 1, "<i4"),
        (-(2**31) - 1, 0, "<i8"),
        (0, 2**40, "<i8"),
    ],
)
def test_the_narrowest_type_holds_every_value_exactly(low, high, wire):
    values = np.array([low, 0, high], dtype=np.int64)
    encoded = dense.encode(values)
    assert encoded.dtype.str == wire
    back = dense.decode(encoded.tobytes(), wire, values.size)
    assert back.dtype == np.int64 and np.array_equal(back, values)


def test_an_empty_range_and_bad_input():
    assert dense.encode(np.zeros(0, dtype=np.int64)).dtype.str == "|i1"
    with pytest.raises(ValueError, match="dense ranges are integers"):
        dense.narrowest(np.zeros(3))
    with pytest.raises(dense.BadRange, match="not one of"):
        dense.decode(b"\0" * 8, "<f8", 1)  # a float range is refused, whatever its size
    with pytest.raises(dense.BadRange, match="7 bytes for 2 values of <i4"):
        dense.decode(b"\0" * 7, "<i4", 2)


def test_the_digest_names_the_type_as_well_as_the_bytes():
    a = np.arange(-5, 5, dtype=np.int64)
    as16 = a.astype("<i2")
    same_bytes = np.frombuffer(as16.tobytes(), dtype="|i1")  # the same bytes read as int8
    assert dense.digest(as16) != dense.digest(same_bytes)
    h = dense.RangeHasher("<i2")
    raw = memoryview(as16.view(np.uint8))
    h.update(raw[:7])  # piece by piece, as received
    h.update(raw[7:])
    assert h.digest() == dense.digest(as16) == dense.digest(as16.copy())
    assert (
        dense.attempt_key("run", 3, 0) != dense.attempt_key("run", 3, 1)
        and len(dense.attempt_key("r", 0, 0)) == 32
    )


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_the_ranges_cover_the_layout_contiguously_on_block_boundaries(n):
    length = 25 * 1000 + 17
    bounds = dense.range_bounds(length, n)
    assert bounds[0][0] == 0 and bounds[-1][1] == length and len(bounds) == n
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(n - 1))
    assert all(lo % BLOCK == 0 for lo, _ in bounds)
    widths = [hi - lo for lo, hi in bounds]
    assert max(widths) - min(widths) <= BLOCK


def test_a_reduce_scatter_of_narrow_ranges_gives_the_canonical_sum():
    """Four dense updates like bench/rounds.py's (float32 ~1e-3): each range travels in int32, half the
    float64 vector, and the ranges summed in int64 are the integers fixedpoint.local_average sums."""
    rng = np.random.default_rng(7)
    state = {"a": np.zeros((300, 40), np.float32), "b": np.zeros(5000, np.float32)}
    layout = fixedpoint.Layout.from_state(state)
    updates = []
    for i in range(4):
        tensors = tuple(
            SparseTensor(
                s.name, s.shape, np.arange(s.size), rng.standard_normal(s.size).astype(np.float32) * 1e-3
            )
            for s in layout.slots
        )
        updates.append((1 + i, Update("run", 0, "0" * 64, bytes([i]) * 32, 0, 1 + i, tensors)))
    contributions = [fixedpoint.contribution(layout, [u]).q for u in updates]
    bounds = dense.range_bounds(layout.length, 4)
    summed = np.empty(layout.length, dtype=np.int64)
    for lo, hi in bounds:
        wire = [dense.encode(q[lo:hi]) for q in contributions]
        assert {w.dtype.str for w in wire} == {"<i4"}
        summed[lo:hi] = sum(dense.decode(w.tobytes(), w.dtype.str, hi - lo) for w in wire)
    expected, c = fixedpoint.local_average(state, layout, updates, 0.5)
    got = fixedpoint.next_version(state, layout, dense.encode(summed), c.weight, 0.5)
    assert all(np.array_equal(got[k], expected[k]) for k in state)
