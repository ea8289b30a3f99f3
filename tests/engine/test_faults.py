"""engine/faults.py without a network: both fault kinds under one key, a dense fault checked against the
signed updates and the manifest's weights (as every receiver checks one), and what a conviction records."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.engine.attempt import RoundStatus
from potluck.engine.faults import WRONG_DENSE_SUM, Faults, kind_of, parse_fault, why
from potluck.identity import NodeIdentity
from potluck.merge import get_strategy
from potluck.rounds import dense, fixedpoint, slices
from potluck.runfiles import write_run
from potluck.updates.codec import SparseTensor, Update, decode_update, encode_update


@pytest.fixture
def setting(tmp_path):
    run = write_run(tmp_path / "run.toml", "toy", density=1.0)
    layout = fixedpoint.Layout.from_state(run.state)
    rng = np.random.default_rng(3)
    updates = []
    for i in range(3):
        author = NodeIdentity.generate()
        tensors = tuple(
            SparseTensor(n, t.shape, np.arange(t.size), rng.standard_normal(t.size).astype(np.float32) * 1e-2)
            for n, t in run.state.items()
        )
        update = Update(run.manifest.run_id, 0, run.genesis_hash, author.public_key, 1, 10 * (i + 1), tensors)
        updates.append(decode_update(encode_update(update, author)))
    updates.sort(key=lambda u: u.update_id)
    status = RoundStatus()
    faults = Faults(
        host=None, manifest=run.manifest, layout=layout, strategy=get_strategy("weighted_mean", {}),
        exchange=None, status=status, defence=None,
    )  # type: ignore[arg-type]  # fmt: skip
    weighted = [(run.manifest.update_weight(u.update.sample_count), u) for u in updates]
    honest = fixedpoint.contribution(layout, weighted).q
    return run.manifest, layout, updates, faults, status, honest


def _fault(manifest, updates, values: np.ndarray, lo: int, column: int) -> dense.DenseFault:
    reducer = NodeIdentity.generate()
    encoded = dense.encode(values)
    ids = tuple(u.update_id for u in updates)
    header = slices.SliceHeader(manifest.run_id, 0, 0, "11" * 32, "22" * 32, reducer.public_key, lo,
                                lo + values.size, ids, dense.tree_digest(encoded))  # fmt: skip
    return dense.DenseFault.make(header.sign(reducer), encoded, lo, column)


def test_a_dense_fault_convicts_only_a_wrong_sum_and_records_why(setting):
    manifest, layout, updates, faults, status, honest = setting
    lo, hi = 256, layout.length
    lied = honest[lo:hi].copy()
    lied[40] -= 5
    fault = parse_fault(_fault(manifest, updates, lied, lo, lo + 40).to_bytes())
    assert isinstance(fault, dense.DenseFault) and kind_of(fault) == WRONG_DENSE_SUM
    header = faults.check(fault, updates)
    with pytest.raises(slices.BadSlice) as e:  # framed: the honest sum, accused at the same coordinate
        faults.check(_fault(manifest, updates, honest[lo:hi], lo, lo + 40), updates)
    assert e.value.reason == "no_fault"
    with pytest.raises(slices.BadSlice, match="wrong_updates"):  # only against the updates it names
        faults.check(fault, updates[:2])
    faults.convict(fault, 0)
    node = header.reducer.hex()
    assert status.convicted[node] == (0, fault.id)
    assert status.convicted_why[node] == why(fault) and "dense sum" in why(fault)
    assert status.convictions == {WRONG_DENSE_SUM: 1}
    assert faults.excluded(header.reducer)


def test_either_kind_parses_from_the_faults_key_and_garbage_does_not():
    block = np.zeros(slices.BLOCK).astype("<f8").tobytes()
    sliced = slices.ReducerFault(b"signed", 0, block, (b"\0" * 32,), 5).to_bytes()
    assert isinstance(parse_fault(sliced), slices.ReducerFault)
    with pytest.raises(slices.BadSlice) as e:
        parse_fault(b"\x93\xa3not a fault")
    assert e.value.reason == "malformed"
