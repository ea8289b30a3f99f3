"""A run whose manifest picks a robust merge strategy: every node merges all of the round's updates
itself and they still agree bit for bit; a sign-flipped x1000 update is clipped, not merged whole."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from potluck.identity import NodeIdentity
from potluck.localswarm import LocalSwarm, wait_for
from potluck.manifest import create_manifest, genesis_path
from potluck.merge import get_strategy, next_state
from potluck.rounds import schedule
from potluck.rpc.client import ControlClient
from potluck.store.versions import VersionStore, atomic_save, version_hash
from potluck.tasks import genesis, get_task
from potluck.updates.codec import SparseTensor, Update, decode_update, encode_update
from potluck.updates.sparsify import sparsify

pytestmark = pytest.mark.multiprocess
ROUND_S = 16.0


def test_centered_clip_run_agrees_and_clips_an_attacker(tmp_path):
    state, genesis_hash = genesis(get_task("toy"), 0)
    creator = NodeIdentity.generate()
    manifest = create_manifest(
        creator, "toy", genesis_hash, round_seconds=ROUND_S, density=0.25, strategy="centered_clip"
    )
    path = tmp_path / "run.toml"
    manifest.save(path)
    atomic_save(state, genesis_path(path))
    with LocalSwarm(
        tmp_path / "swarm", run=manifest.run_id, record_ttl=6, extra_args=["--manifest", str(path)]
    ) as swarm:
        swarm.start(3)
        swarm.wait_all_see(2)
        r = schedule.round_at(manifest, time.time()) + 1
        while time.time() < schedule.round_start(manifest, r) + 0.3:
            time.sleep(0.05)
        rng = np.random.default_rng(7)
        authors = [NodeIdentity.generate() for _ in range(3)]
        honest = [
            Update(manifest.run_id, r, genesis_hash, a.public_key, 1, 10,
                   tuple(sparsify(n, rng.standard_normal(t.shape).astype(np.float32) * 0.05, 0.25)
                         for n, t in state.items()))
            for a in authors
        ]  # fmt: skip
        mallory = NodeIdentity.generate()  # replays author 0's update, sign-flipped and 1000x larger
        flipped = tuple(SparseTensor(t.name, t.shape, t.indices, -1000 * t.values) for t in honest[0].tensors)
        attack = Update(manifest.run_id, r, genesis_hash, mallory.public_key, 1, 10, flipped)
        datas = [encode_update(u, a) for u, a in zip(honest, authors, strict=True)]
        datas.append(encode_update(attack, mallory))
        for i, data in enumerate(datas):
            with ControlClient(swarm.nodes[i % 3].rpc_address) as client:
                reply = client.publish(data)
            assert reply.accepted, reply.reason
        wait_for(
            lambda: all(n.status()["committed_round"] >= r for n in swarm.nodes), ROUND_S + 10, f"round {r}"
        )
        versions = {n.status()["version"] for n in swarm.nodes}
        assert len(versions) == 1
        strategy = get_strategy("centered_clip", {})
        decoded = [decode_update(d) for d in datas]
        seed = int.from_bytes(hashlib.sha256(f"{manifest.run_id}/{r}".encode()).digest()[:8], "little")
        expected = next_state(state, strategy.merge(decoded, [10.0] * 4, round_seed=seed), 1.0)
        assert versions == {version_hash(expected)}
        merged = VersionStore(swarm.nodes[0].data_dir / "versions").get(versions.pop())
        mean = next_state(state, get_strategy("mean", {}).merge(decoded, [10.0] * 4, round_seed=seed), 1.0)
        step = max(float(np.abs(merged[k] - state[k]).max()) for k in state)
        attacked = max(float(np.abs(mean[k] - state[k]).max()) for k in state)
        assert step < attacked / 20, (step, attacked)
