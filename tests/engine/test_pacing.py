""" "Ready" pacing between real nodes (rounds/schedule.py, engine/closing.py): a round closes as soon as
every contributor that declared itself for it has published, far ahead of its clock bound; every
node ends each round with the same version; and an update that arrives after its round closed is
merged in the next round."""

from __future__ import annotations

import time

import numpy as np
import pytest

from potluck.identity import NodeIdentity
from potluck.localswarm import LocalNode, LocalSwarm, wait_for
from potluck.node import HISTORY_FILE
from potluck.runfiles import write_run
from potluck.store.history import History
from potluck.store.versions import VersionStore
from potluck.updates.codec import Update, encode_update, parse_update
from potluck.updates.sparsify import sparsify

pytestmark = pytest.mark.multiprocess
ROUND_S = 60.0  # the clock bound: 45 s of collecting; the rounds here close within seconds
ROUNDS = 3
STEPS = 10_000  # seconds of training a round: time for the late update to land while round 1 trains


def history(node: LocalNode) -> list[dict]:
    path = node.data_dir / HISTORY_FILE
    if not path.exists():
        return []
    with History(path, readonly=True) as h:
        return h.log()


def late_update(keeper: LocalNode, run_id: str, base: str, author: NodeIdentity) -> bytes:
    """A round-0 update onto the genesis: by the time it is published, round 0 has closed."""
    state = VersionStore(keeper.data_dir / "versions").get(base)
    rng = np.random.default_rng(7)
    tensors = tuple(
        sparsify(name, rng.standard_normal(t.shape).astype(np.float32) * 0.01, 0.05)
        for name, t in state.items()
    )
    update = Update(run_id, 0, base, author.public_key, int(time.time() * 1000), 50, tensors)
    return encode_update(update, author)


def test_ready_rounds_close_when_every_declared_update_is_in(tmp_path):
    run = write_run(tmp_path / "run.toml", "digits", round_seconds=ROUND_S, density=0.05, pacing="ready")
    genesis = run.manifest.genesis
    with LocalSwarm.for_run(tmp_path, run.manifest.run_id, run.path) as swarm:
        keepers = [swarm.add_node(name="keeper0").wait_ready()]
        keepers.append(swarm.add_node(name="keeper1").wait_ready())
        for i in range(2):
            swarm.add_contributor(
                f"contributor{i}", "--shard", f"{i}/2", "--local-steps", str(STEPS), "--seed", str(i),
                "--rounds", str(ROUNDS),
            )  # fmt: skip
        for node in swarm.nodes:
            node.wait_ready()

        # round 0 commits; its late update (onto V_0, for round 0) goes to a keeper while round 1 trains
        wait_for(lambda: history(keepers[0]), 120, "round 0 to commit")
        data = late_update(keepers[0], run.manifest.run_id, genesis, NodeIdentity.generate())
        reply = keepers[1].publish(data)
        assert reply.accepted, f"{reply.reason}: {reply.detail}"
        late_id = parse_update(data).update_id

        wait_for(
            lambda: all(len(history(n)) >= ROUNDS for n in swarm.nodes), 120, f"{ROUNDS} rounds everywhere"
        )
        logs = [history(n)[:ROUNDS] for n in swarm.nodes]
        with History(keepers[0].data_dir / HISTORY_FILE, readonly=True) as h:
            merged = [set(h.get(r).updates) for r in range(ROUNDS)]

    # every node (keepers and contributors take part alike) holds the same versions, round by round
    versions = [[row["version"] for row in log] for log in logs]
    assert all(v == versions[0] for v in versions), versions
    rows = logs[0]
    assert [row["round"] for row in rows] == list(range(ROUNDS))
    # the late update is in round 1, next to both contributors' round-1 updates; not in round 0
    assert late_id not in merged[0]
    assert late_id in merged[1]
    assert len(merged[1]) == 3 and all(len(ids) == 2 for i, ids in enumerate(merged) if i != 1), merged
    # each round closed because both declared contributors had published (at the first participant to
    # hold both; the others joined it), never at its clock bound
    lines = [line for n in swarm.nodes for line in (n.data_dir / "node.log").read_text().splitlines()]
    for r in range(ROUNDS):
        closes = [line.split(": ", 1)[1] for line in lines if f"round {r} closed after" in line]
        assert len(closes) == len(swarm.nodes), closes
        assert any("every declared contributor (2) has published" in c for c in closes), closes
        assert all("every declared" in c or "another keeper closed it" in c for c in closes), closes
