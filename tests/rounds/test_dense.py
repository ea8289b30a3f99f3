from dataclasses import replace

import numpy as np
import pytest

from potluck.identity import NodeIdentity
from potluck.rounds import dense, fixedpoint
from potluck.rounds.slices import BLOCK, MAX_FAULT_BYTES, BadSlice, SliceHeader
from potluck.updates.codec import SparseTensor, Update
from potluck.wire import pack_pair, unpack_pair


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


# ---- merged ranges: the Merkle digest a reducer signs, and the fault that convicts a wrong sum ------------


def test_the_tree_digest_is_the_same_piece_by_piece_and_names_the_type():
    a = np.arange(-15000, 15000, dtype=np.int64).astype("<i2")  # 60000 bytes: 7 leaves and a short one
    h = dense.TreeHasher("<i2")
    raw = memoryview(a.view(np.uint8))
    for start, end in [(0, 7), (7, 8192), (8192, 20000), (20000, 60000)]:  # pieces across leaf edges
        h.update(raw[start:end])
    assert h.digest() == dense.tree_digest(a)
    assert dense.tree_digest(a) != dense.tree_digest(np.frombuffer(a.tobytes(), dtype="|i1"))
    assert dense.tree_digest(a) != dense.digest(a)  # a merged range is not named like a part
    assert dense.tree_digest(a[:-1]) != dense.tree_digest(a)  # nor a shorter one like a longer one


LAYOUT_STATE = {"w": np.zeros((64, 100), np.float32), "b": np.zeros(100, np.float32)}  # 6500 coordinates


def _updates(n: int = 3, scale: float = 1e-3) -> tuple[fixedpoint.Layout, list[tuple[int, Update]]]:
    rng = np.random.default_rng(11)
    layout = fixedpoint.Layout.from_state(LAYOUT_STATE)
    weighted = []
    for i in range(n):
        tensors = tuple(
            SparseTensor(
                s.name, s.shape, np.arange(s.size), rng.standard_normal(s.size).astype(np.float32) * scale
            )
            for s in layout.slots
        )
        weighted.append((10, Update("run", 4, "0" * 64, bytes([i]) * 32, 0, 10, tensors)))
    return layout, weighted


def _signed_range(
    reducer: NodeIdentity, values: np.ndarray, lo: int, ids: tuple[str, ...], run: str = "run"
) -> tuple[bytes, np.ndarray]:
    encoded = dense.encode(values)
    header = SliceHeader(run, 4, 0, "11" * 32, "22" * 32, reducer.public_key, lo, lo + values.size, ids,
                         dense.tree_digest(encoded))  # fmt: skip
    return header.sign(reducer), encoded


def test_a_wrong_dense_sum_is_proven_by_one_leaf_and_an_honest_one_is_not():
    layout, weighted = _updates()
    honest = sum(fixedpoint.contribution(layout, [u]).q for u in weighted)
    lo, hi = dense.range_bounds(layout.length, 2)[1]
    reducer, ids = NodeIdentity.generate(), tuple(f"{i:064x}" for i in range(dense.MAX_FAULT_UPDATES))

    def expected(header: SliceHeader, column: int) -> int | None:
        return dense.exact_sum_at(layout, weighted, column)

    assert all(expected(None, c) == honest[c] for c in (0, lo, hi - 1))  # type: ignore[arg-type]
    lied = honest[lo:hi].copy()
    lied[1000] += 1
    signed, encoded = _signed_range(reducer, lied, lo, ids, run="r" * 256)  # the longest run id
    fault = dense.DenseFault.make(signed, encoded, lo, lo + 1000)
    data = fault.to_bytes()
    # a DHT value under hivemind's hazard with as many update ids as a fault may name, and a proof as
    # deep as a range of 2**33 bytes has (25 levels of 8 KiB leaves)
    assert len(data) + 34 * (25 - len(fault.proof)) <= MAX_FAULT_BYTES
    back = dense.DenseFault.from_bytes(data)
    assert back == fault and back.id == fault.id
    assert back.verify(expected).reducer == reducer.public_key
    # a false accusation: the same fault at a coordinate where the signed value is right
    with pytest.raises(BadSlice) as e:
        dense.DenseFault.make(signed, encoded, lo, lo + 1001).verify(expected)
    assert e.value.reason == "no_fault"
    signed_ok, encoded_ok = _signed_range(reducer, honest[lo:hi], lo, ids)
    with pytest.raises(BadSlice, match="no_fault"):
        dense.DenseFault.make(signed_ok, encoded_ok, lo, lo + 1000).verify(expected)


def test_forged_dense_faults_are_refused_with_a_reason():
    layout, weighted = _updates()
    honest = sum(fixedpoint.contribution(layout, [u]).q for u in weighted)
    lo, hi = 0, 6000  # 3 leaves of int32
    reducer = NodeIdentity.generate()
    signed, encoded = _signed_range(reducer, honest[lo:hi], lo, ("ab" * 32,))
    fault = dense.DenseFault.make(signed, encoded, lo, 700)

    def expected(header: SliceHeader, column: int) -> int | None:
        return dense.exact_sum_at(layout, weighted, column)

    def reason(f: dense.DenseFault) -> str:
        with pytest.raises(BadSlice) as e:
            dense.DenseFault.from_bytes(f.to_bytes()).verify(expected)
        return e.value.reason

    # the honest value at 700 swapped for a wrong one in the leaf: no longer under the signed digest
    t = np.dtype(fault.dtype)
    leaf = bytearray(fault.leaf_bytes)
    offset = (700 - fault.leaf * dense.LEAF_BYTES // t.itemsize) * t.itemsize
    leaf[offset : offset + t.itemsize] = (int(honest[700]) + 1).to_bytes(t.itemsize, "little", signed=True)
    assert reason(replace(fault, leaf_bytes=bytes(leaf))) == "bad_proof"
    assert reason(replace(fault, dtype="<i8")) in ("not_in_range", "bad_proof")  # another type, same bytes
    assert reason(replace(fault, column=fault.column + dense.LEAF_BYTES)) == "not_in_range"  # another leaf's
    assert reason(replace(fault, leaf=99)) == "not_in_range"
    mallory = NodeIdentity.generate()  # a header "by the reducer" signed by someone else
    forged = pack_pair(unpack_pair(signed, 1 << 16)[0], mallory.sign(unpack_pair(signed, 1 << 16)[0]))
    assert reason(replace(fault, signed=forged)) == "bad_signature"
    with pytest.raises(BadSlice, match="malformed"):
        dense.DenseFault.from_bytes(fault.to_bytes()[:-1])


def test_a_coordinate_a_carrier_may_have_clipped_proves_nothing():
    layout, weighted = _updates(2, scale=1.0)
    big = [(fixedpoint.MAX_WEIGHT, u) for _, u in weighted]  # |w * delta / QUANTUM| far beyond BOUND
    assert dense.exact_sum_at(layout, big, 5) is None
    assert dense.exact_sum_at(layout, weighted, 5) is not None
