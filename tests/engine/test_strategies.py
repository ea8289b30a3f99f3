"""A run whose manifest picks a robust merge strategy: every node merges all of the round's updates
itself and they still agree bit for bit; a sign-flipped x1000 update is clipped, not merged whole."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from potluck.localswarm import wait_for
from potluck.merge import get_strategy, next_state
from potluck.store.versions import VersionStore
from potluck.updates.codec import decode_update
from tests.engine.attacked_round import expected_version, make_run, publish_attacked_round, run_swarm

pytestmark = pytest.mark.multiprocess
ROUND_S = 16.0


def test_centered_clip_run_agrees_and_clips_an_attacker(tmp_path):
    manifest, path, state, genesis_hash = make_run(tmp_path, ROUND_S, strategy="centered_clip")
    with run_swarm(tmp_path, manifest, path) as swarm:
        swarm.start(3)
        swarm.wait_all_see(2)
        r, datas = publish_attacked_round(swarm.nodes, manifest, state, genesis_hash)
        wait_for(
            lambda: all(n.status()["committed_round"] >= r for n in swarm.nodes), ROUND_S + 10, f"round {r}"
        )
        versions = {n.status()["version"] for n in swarm.nodes}
        assert versions == {expected_version(manifest, state, datas, r, "centered_clip")}
        assert swarm.nodes[0].status()["aggregation"]["placement"] == "gathered"
        merged = VersionStore(swarm.nodes[0].data_dir / "versions").get(versions.pop())
        decoded = [decode_update(d) for d in datas]
        seed = int.from_bytes(hashlib.sha256(f"{manifest.run_id}/{r}".encode()).digest()[:8], "little")
        mean = next_state(state, get_strategy("mean", {}).merge(decoded, [10.0] * 4, round_seed=seed), 1.0)
        step = max(float(np.abs(merged[k] - state[k]).max()) for k in state)
        attacked = max(float(np.abs(mean[k] - state[k]).max()) for k in state)
        assert step < attacked / 20, (step, attacked)
