"""Sliced aggregation's pure core: slice bounds, Merkle proofs, signed headers, audits and faults."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from potluck.identity import NodeIdentity
from potluck.rounds.slices import (
    BLOCK,
    MAX_FAULT_BYTES,
    BadSlice,
    ReducerFault,
    SliceHeader,
    SliceResult,
    audit,
    merkle_proof,
    merkle_root,
    slice_bounds,
    verify_merkle,
)


@pytest.mark.parametrize("length,n", [(0, 1), (1, 3), (255, 2), (256, 2), (10_000, 3), (77_834, 8), (5, 8)])
def test_slices_cover_every_coordinate_once_on_block_boundaries(length, n):
    bounds = slice_bounds(length, n)
    assert len(bounds) == n
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    for (lo, hi), (lo2, _) in itertools.pairwise(bounds):
        assert lo <= hi == lo2 and lo % BLOCK == 0
    widths = [hi - lo for lo, hi in bounds]
    assert max(widths) - min(widths) <= BLOCK or length < BLOCK * n


@pytest.mark.parametrize("count", [1, 256, 257, 1000, 5 * 256])
def test_every_block_proves_against_the_root_and_nothing_else_does(count):
    values = np.random.default_rng(count).standard_normal(count)
    root = merkle_root(values)
    data = values.astype("<f8").tobytes()
    blocks = -(-count // BLOCK)
    for b in range(blocks):
        block = data[b * BLOCK * 8 : (b + 1) * BLOCK * 8]
        proof = merkle_proof(values, b)
        assert verify_merkle(root, b, block, proof)
        assert not verify_merkle(root, b, block[:-8] + b"\0" * 8, proof)
        if blocks > 1:
            assert not verify_merkle(root, (b + 1) % blocks, block, proof)


def _header(reducer: NodeIdentity, values: np.ndarray, lo: int = 512) -> SliceHeader:
    return SliceHeader(
        run="ab" * 32, round=3, attempt=1, parent="cd" * 32, digest="ef" * 32,
        reducer=reducer.public_key, lo=lo, hi=lo + values.size,
        updates=tuple(sorted(f"{i:064x}" for i in range(5))), root=merkle_root(values),
    )  # fmt: skip


def test_a_result_round_trips_and_any_tampering_is_refused():
    me = NodeIdentity.generate()
    values = np.random.default_rng(0).standard_normal(700)
    header = _header(me, values)
    result = SliceResult.make(header, me, values)
    parsed, back = SliceResult.from_bytes(result.to_bytes(), max_values=1000)
    assert parsed == header and back.values.tobytes() == values.tobytes()
    forged = SliceResult(result.signed, values + 1e-12)
    with pytest.raises(BadSlice, match="root"):
        SliceResult.from_bytes(forged.to_bytes(), 1000)
    with pytest.raises(ValueError):  # nobody signs for another reducer
        SliceResult.make(header, NodeIdentity.generate(), values)
    other = SliceResult.make(dataclasses.replace(header, round=4), me, values)
    swapped = SliceResult(other.signed[:-64] + result.signed[-64:], values)  # another body, same signature
    with pytest.raises(BadSlice):
        SliceResult.from_bytes(swapped.to_bytes(), 1000)
    with pytest.raises(BadSlice):
        SliceResult.from_bytes(result.to_bytes(), max_values=100)  # larger than the caller allows
    with pytest.raises(BadSlice):
        SliceResult.from_bytes(b"\x93\x01\x02", 1000)


def _truth(columns: np.ndarray) -> np.ndarray:
    return np.sin(columns.astype(np.float64))  # stands in for the strategy over the signed updates


def test_an_honest_slice_passes_every_audit():
    me = NodeIdentity.generate()
    values = _truth(np.arange(512, 512 + 3000))
    header = _header(me, values)
    for _ in range(20):
        assert audit(header, SliceResult.make(header, me, values), _truth, samples=64) is None


def test_a_lie_is_caught_and_the_fault_convicts_the_liar_alone():
    liar = NodeIdentity.generate()
    values = _truth(np.arange(512, 512 + 3000))
    values[1700] = np.nextafter(values[1700], 10)  # one ulp off at one coordinate
    header = _header(liar, values)
    result = SliceResult.make(header, liar, values)
    fault = audit(header, result, _truth, samples=header.hi - header.lo)
    assert fault is not None and fault.column == 512 + 1700
    data = fault.to_bytes()
    assert len(data) < MAX_FAULT_BYTES
    parsed = ReducerFault.from_bytes(data)
    assert parsed.verify(_truth).reducer == liar.public_key
    assert parsed.id == fault.id
    # evidence that does not prove a lie convicts nobody
    honest_column = dataclasses.replace(parsed, column=parsed.column + 1)
    with pytest.raises(BadSlice, match="right"):
        honest_column.verify(_truth)
    with pytest.raises(BadSlice, match="root"):
        dataclasses.replace(parsed, block_bytes=_truth(np.arange(1536, 1792)).astype("<f8").tobytes()).verify(
            _truth
        )
    with pytest.raises(BadSlice, match="block"):
        dataclasses.replace(parsed, column=512).verify(_truth)
    with pytest.raises(BadSlice):
        dataclasses.replace(parsed, signed=parsed.signed[:-1] + bytes([parsed.signed[-1] ^ 1])).verify(_truth)
    with pytest.raises(BadSlice):
        ReducerFault.from_bytes(data[:-3])


def test_a_large_lie_is_caught_by_a_small_sample():
    liar = NodeIdentity.generate()
    values = _truth(np.arange(0, 50_000)) * 1.5  # every coordinate wrong
    header = _header(liar, values, lo=0)
    fault = audit(header, SliceResult.make(header, liar, values), _truth, samples=16)
    assert fault is not None
    assert fault.verify(_truth).reducer == liar.public_key
