"""The gathered merge takes a revert into its round: the revert weighs 0 and adds the step recomputed
from the node's history (vcs/revert.py), beside the round's other updates, before the one cast."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from potluck.engine.attempt import Attempt, AttemptFailed
from potluck.engine.gathered import merge_gathered
from potluck.identity import NodeIdentity
from potluck.rounds.fixedpoint import Layout
from potluck.rounds.merging import merge_round
from potluck.store.versions import VersionStore
from potluck.updates.codec import SignedUpdate, decode_update
from potluck.vcs import revert
from potluck.vcs.repo import HistoryRepo
from tests.vcs.conftest import build_history, make_update


class Held:
    """The exchange as the gathered merge reads it: every update held and decoded."""

    def __init__(self, updates: list[SignedUpdate]) -> None:
        self._by_id = {u.update_id: u for u in updates}

    def held_update(self, update_id: str) -> object | None:
        return object() if update_id in self._by_id else None

    def decoded(self, update_id: str) -> SignedUpdate:
        return self._by_id[update_id]


def test_a_revert_in_a_gathered_round_adds_its_step_and_weighs_nothing(tmp_path: Path) -> None:
    b = build_history(tmp_path, rounds=2, revert="anyone")
    base = b.versions[-1]
    state = VersionStore(b.data_dir / "versions").get(base)
    layout = Layout.from_state(state)
    me = NodeIdentity.generate()
    target = b.updates[0][0]
    undo = decode_update(revert.as_update(me, b.manifest.run_id, 2, base, [target]))
    plain = decode_update(make_update(b.authors[1], b.manifest, 2, base, seed=5))
    ids = sorted([undo.update_id, plain.update_id])
    attempt = Attempt(
        b.manifest, 2, 0, base, state, layout, [], dict.fromkeys(ids, me.public_key), frozenset(ids), "",
        time.time(), time.time() + 60,
    )  # fmt: skip
    merged = asyncio.run(merge_gathered(attempt, Held([undo, plain]), None, b.data_dir))
    weight = b.manifest.update_weight(plain.update.sample_count)
    assert merged.updates == ids and merged.total_weight == weight
    with HistoryRepo(b.data_dir) as repo:
        step = revert.round_step(repo, [undo], 2, layout, b.manifest.outer_lr)
    assert step is not None and set(step) == {"l1.weight", "l2.bias"}
    expected, _ = merge_round(state, layout, [(weight, plain)], b.manifest, None, 0, step)
    without, _ = merge_round(state, layout, [(weight, plain)], b.manifest, None, 0)
    for name in state:
        assert np.array_equal(merged.state[name], expected[name])
        assert np.array_equal(merged.state[name], without[name]) == (name not in step)
    with pytest.raises(AttemptFailed, match="no history"):
        asyncio.run(merge_gathered(attempt, Held([undo, plain]), None, None))
