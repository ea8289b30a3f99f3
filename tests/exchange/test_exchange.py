"""Updates travel between real nodes: publish, fetch, outlive their author, survive a lying holder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from potluck.cli.update_files import make_update
from potluck.identity import NodeIdentity
from potluck.localswarm import wait_for
from tests.support.attacks import run_lying_holder
from tests.support.cli import potluck
from tests.support.spawned import run_spawned
from tests.support.swarm import connected_swarm

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    base = {"w": rng.standard_normal((64, 32)).astype(np.float32), "b": np.zeros(32, np.float32)}
    for name, state in (("base", base), ("other", {k: v + 1 for k, v in base.items()})):
        save_file(state, str(root / f"{name}.safetensors"))
    for i in range(3):
        tuned = {k: v + 0.01 * rng.standard_normal(v.shape).astype(np.float32) for k, v in base.items()}
        save_file(tuned, str(root / f"tuned{i}.safetensors"))
    return root


def update(models, i: int, base: str = "base", author: NodeIdentity | None = None) -> bytes:
    return make_update(
        models / f"{base}.safetensors",
        models / f"tuned{i}.safetensors",
        author or NodeIdentity.generate(),
        density=0.1,
        values="int8",
        round=0,
        run="default",
        seq=1,
        sample_count=10,
    )


def _updates(node) -> dict[str, dict]:
    return {u["update_id"]: u for u in node.updates()}


@pytest.fixture(scope="module")
def swarm(models, tmp_path_factory):
    with connected_swarm(
        tmp_path_factory.mktemp("potluck-swarm-"), 2, extra_args=["--model", str(models / "base.safetensors")]
    ) as swarm:
        yield swarm


def test_an_update_outlives_its_author(swarm, models, tmp_path):
    a, b = swarm.nodes
    path = tmp_path / "u.update"
    path.write_bytes(update(models, 0))
    reply = json.loads(
        potluck("update", "publish", str(path), "--data-dir", str(a.data_dir), "--json").stdout
    )
    assert reply["accepted"], reply
    uid = reply["update_id"]
    wait_for(lambda: uid in _updates(b), 30, "B to fetch the update")
    assert _updates(b)[uid]["source"] == "fetched" and b.status()["fetched_updates"] == 1

    a.kill_group()  # the author's node is gone for good
    c = swarm.add_node(initial_peers=[b.multiaddr()], name="late").wait_ready()
    wait_for(lambda: uid in _updates(c), 30, "C to fetch the update from B")
    assert c.status()["accepted_updates"] == 1
    listing = potluck("update", "list", "--data-dir", str(c.data_dir)).stdout
    assert uid[:16] in listing and "fetched" in listing
    swarm.nodes.remove(a)


def test_bad_updates_are_rejected_with_their_reason(swarm, models, tmp_path):
    node = swarm.nodes[0]
    wrong_base = tmp_path / "wrong-base.update"
    wrong_base.write_bytes(update(models, 1, base="other"))
    tampered = tmp_path / "tampered.update"
    data = bytearray(update(models, 1))
    data[-70] ^= 0xFF  # inside the signature
    tampered.write_bytes(bytes(data))
    before = node.status()["rejected_updates"]
    held_before = len(_updates(node))
    for path, reason in ((wrong_base, "unknown_base"), (tampered, "bad_signature")):
        proc = potluck("update", "publish", str(path), "--data-dir", str(node.data_dir))
        assert proc.returncode == 1 and reason in proc.stderr
    after = node.status()["rejected_updates"]
    assert after["unknown_base"] == before["unknown_base"] + 1
    assert after["bad_signature"] == before["bad_signature"] + 1
    assert len(_updates(node)) == held_before  # nothing new held


def test_a_holder_serving_other_bytes_is_caught_and_avoided(swarm, models, tmp_path):
    from potluck.updates.codec import parse_update

    victim = swarm.nodes[0]
    author = NodeIdentity.generate()
    wanted, decoy = update(models, 2, author=author), update(models, 1)
    wanted_id = parse_update(wanted).update_id
    before = victim.status()["bad_holder_fetches"]
    run_spawned(
        run_lying_holder, swarm.nodes[1].multiaddr(), "default", wanted_id, 0, author.public_key, decoy,
        tmp_path / "liar", victim.rpc_address, before, timeout=90,
    )  # fmt: skip
    assert wanted_id not in _updates(victim) and parse_update(decoy).update_id not in _updates(victim)
    # the real update, published at an honest node, still arrives
    path = tmp_path / "wanted.update"
    path.write_bytes(wanted)
    assert potluck("update", "publish", str(path), "--data-dir", str(swarm.nodes[1].data_dir)).returncode == 0
    wait_for(lambda: wanted_id in _updates(victim), 30, "the honest holder's copy")
