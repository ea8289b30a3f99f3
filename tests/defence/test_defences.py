"""Defences between real nodes: an author that signs two updates for one round is banned by every
honest node, the round commits without it, the ban shows in `potluck status` and `potluck peers` and
survives a restart; a node that never saw the two updates bans on the published evidence alone.
Probation, the allowlist and the norm cap of the manifest hold on the same run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from potluck.defence.evidence import Equivocation, EvidenceRecord, evidence_key
from potluck.hashing import version_hash
from potluck.identity import KEY_FILE, NodeIdentity
from potluck.localswarm import LocalNode, next_collecting_round, wait_for
from potluck.rounds import fixedpoint, schedule
from potluck.runfiles import write_run
from potluck.store.versions import VersionStore
from potluck.updates.codec import Update, decode_update, encode_update, parse_update
from potluck.updates.sparsify import sparsify
from potluck.wire import pack_pair
from tests.support.attacks import store_values
from tests.support.cli import potluck_json
from tests.support.spawned import run_spawned
from tests.support.swarm import connected_swarm

pytestmark = pytest.mark.multiprocess
ROUND_S = 16.0
HONEST = [NodeIdentity.generate() for _ in range(4)]  # 3 veterans and one newcomer (probation)
MALLORY = NodeIdentity.generate()  # signs two different updates for one round
OUTSIDER = NodeIdentity.generate()  # not on the allowlist


def make_update(manifest, base: str, state, author: NodeIdentity, r: int, seed: int, scale=0.05) -> bytes:
    rng = np.random.default_rng(seed)
    tensors = tuple(
        sparsify(name, rng.standard_normal(t.shape).astype(np.float32) * scale, 0.25)
        for name, t in state.items()
    )
    update = Update(
        manifest.run_id, r, base, author.public_key, int(time.time() * 1000), 10 + seed % 7, tensors
    )
    return encode_update(update, author)


def defence(node: LocalNode) -> dict:
    return node.status()["defence"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    written = write_run(
        tmp_path_factory.mktemp("run") / "run.toml", "toy", round_seconds=ROUND_S, density=0.25,
        admission="allowlist", allow=[a.node_id for a in [*HONEST, MALLORY]], max_update_norm=5.0,
        probation_rounds=1,
    )  # fmt: skip
    return written.manifest, written.path


@pytest.fixture(scope="module")
def swarm(run, tmp_path_factory):
    _, path = run
    with connected_swarm(tmp_path_factory.mktemp("potluck-swarm-"), 3, manifest=path) as swarm:
        mallory_dir = swarm.root / "mallory"  # Mallory runs a node too, with the key it signs with
        mallory_dir.mkdir(mode=0o700)
        fd = os.open(mallory_dir / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, MALLORY.to_pem())
        os.close(fd)
        swarm.add_node(name="mallory").wait_ready()
        swarm.wait_all_see(3)
        yield swarm


def test_equivocation_bans_the_author_everywhere_and_the_round_commits_without_it(run, swarm):
    manifest, _ = run
    honest_nodes, mallory_node = swarm.nodes[:3], swarm.nodes[3]
    versions = VersionStore(honest_nodes[0].data_dir / "versions")

    # round r1: three new authors, all on probation (weight 0): listed, version unchanged
    r1 = next_collecting_round(manifest)
    v0 = honest_nodes[0].status()["version"]
    state0 = versions.get(v0)
    for i, node in enumerate(honest_nodes):
        assert node.publish(make_update(manifest, v0, state0, HONEST[i], r1, seed=i)).accepted
    wait_for(lambda: all(n.status()["committed_round"] >= r1 for n in honest_nodes), ROUND_S + 10, "round 1")
    log = potluck_json("log", "--data-dir", str(honest_nodes[0].data_dir))
    assert log[-1]["round"] == r1 and log[-1]["updates"] == 3 and len(log[-1]["contributors"]) == 3
    assert {n.status()["version"] for n in honest_nodes} == {v0}  # all weighed 0

    # round r2: the veterans count, a newcomer is on probation, Mallory equivocates
    r2 = next_collecting_round(manifest)
    statuses = [n.status() for n in honest_nodes]
    assert {s["version"] for s in statuses} == {v0}
    veterans = [make_update(manifest, v0, state0, HONEST[i], r2, seed=10 + i) for i in range(3)]
    newcomer = make_update(manifest, v0, state0, HONEST[3], r2, seed=13)
    first = make_update(manifest, v0, state0, MALLORY, r2, seed=20)
    second = make_update(manifest, v0, state0, MALLORY, r2, seed=21)
    assert honest_nodes[1].publish(second).accepted  # Mallory slips one update to node 1 ...
    # ... and announces another one itself (refused at once when node 1's announcement was pushed
    # to Mallory's node first: either way the two signed updates are out, and that is the evidence)
    reply = mallory_node.publish(first)
    assert reply.accepted or reply.reason == "equivocation", reply
    for i, data in enumerate(veterans):
        assert honest_nodes[i].publish(data).accepted
    assert honest_nodes[2].publish(newcomer).accepted
    # the manifest's allowlist and norm cap hold on a real node
    reply = honest_nodes[0].publish(make_update(manifest, v0, state0, OUTSIDER, r2, seed=30))
    assert (reply.accepted, reply.reason) == (False, "not_admitted")
    reply = honest_nodes[0].publish(make_update(manifest, v0, state0, HONEST[3], r2, seed=31, scale=1.0))
    assert (reply.accepted, reply.reason) == (False, "norm_exceeded")

    def banned_everywhere() -> bool:
        return all(any(b["node_id"] == MALLORY.node_id for b in defence(n)["bans"]) for n in honest_nodes)

    wait_for(banned_everywhere, ROUND_S, "every honest node to ban Mallory")
    bans = [next(b for b in defence(n)["bans"] if b["node_id"] == MALLORY.node_id) for n in honest_nodes]
    assert {(b["reason"], b["round"]) for b in bans} == {("equivocation", r2)}
    assert len({b["evidence_id"] for b in bans}) == 1  # the same evidence, whoever found it
    reply = honest_nodes[0].publish(make_update(manifest, v0, state0, MALLORY, r2, seed=22))
    assert (reply.accepted, reply.reason) == (False, "banned")

    wait_for(lambda: all(n.status()["committed_round"] >= r2 for n in honest_nodes), ROUND_S + 10, "round 2")
    after = [n.status() for n in honest_nodes]
    assert len({s["version"] for s in after}) == 1, "honest nodes disagree"
    carried = [
        (manifest.update_weight(decode_update(d).update.sample_count), decode_update(d)) for d in veterans
    ]
    expected, _ = fixedpoint.local_average(
        state0, fixedpoint.Layout.from_state(state0), carried, manifest.outer_lr
    )
    assert after[0]["version"] == version_hash(expected)  # veterans only: no Mallory, newcomer weighs 0
    log = potluck_json("log", "--data-dir", str(honest_nodes[2].data_dir))
    assert log[-1]["round"] == r2 and log[-1]["updates"] == 4  # 3 veterans + the newcomer, listed
    assert MALLORY.node_id not in log[-1]["contributors"] and HONEST[3].node_id in log[-1]["contributors"]
    for s in after:
        assert s["rejected_updates"]["equivocation"] + s["rejected_updates"]["banned"] >= 1

    # what people see: status and peers, as JSON
    status = potluck_json("status", "--data-dir", str(honest_nodes[2].data_dir))
    assert any(b["node_id"] == MALLORY.node_id for b in status["defence"]["bans"])
    assert status["defence"]["evidence_verified"] >= 1 and status["defence"]["probation_rounds"] == 1
    assert not any(p["node_id"] == HONEST[3].node_id for p in status["defence"]["probation"])  # served in r2
    peers = potluck_json("peers", "--data-dir", str(honest_nodes[2].data_dir))
    (seen,) = [p for p in peers if p["node_id"] == MALLORY.node_id]
    assert seen["banned"] and seen["ban_reason"] == "equivocation"
    assert not any(p["banned"] for p in peers if p["node_id"] != MALLORY.node_id)

    # a node that never saw the two updates bans on the published evidence alone. It starts once round
    # r2 is over by the clock: a node still catching up validates the clock's round, and in round r2 it
    # would fetch both updates and find the equivocation itself
    time.sleep(max(0.0, schedule.deadline(manifest, r2) + 0.5 - time.time()))
    assert schedule.round_at(manifest, time.time()) == r2 + 1, "too slow to start the late node in r2+1"
    late = swarm.add_node(name="late").wait_ready()
    wait_for(
        lambda: any(b["node_id"] == MALLORY.node_id for b in defence(late)["bans"]), ROUND_S, "the late node"
    )
    assert defence(late)["equivocations_found"] == 0 and defence(late)["evidence_verified"] == 1

    # bans survive a restart
    node = honest_nodes[2]
    assert node.stop() == 0
    node.start().wait_ready()
    assert any(b["node_id"] == MALLORY.node_id for b in defence(node)["bans"])
    wait_for(lambda: any(p["node_id"] == MALLORY.node_id for p in node.peers()), 20, "peers after restart")
    (seen,) = [p for p in node.peers() if p["node_id"] == MALLORY.node_id]
    assert seen["banned"]
    assert parse_update(first).update_id != parse_update(second).update_id
    assert (Path(node.data_dir) / "bans").is_dir()


def test_bogus_evidence_in_the_dht_bans_nobody(run, swarm):
    """Eve, who is not even admitted, stores evidence records in the real DHT: one claims that an
    honest author equivocated, naming that author's update and another author's; one carries a
    forged signature. Every node checks them on its own, counts them by reason, and bans nobody;
    the round commits both honest updates."""
    manifest, _ = run
    honest_nodes = swarm.nodes[:3]
    eve = NodeIdentity.generate()
    r = next_collecting_round(manifest)
    version = honest_nodes[0].status()["version"]
    state = VersionStore(honest_nodes[0].data_dir / "versions").get(version)
    datas = [make_update(manifest, version, state, HONEST[i], r, seed=40 + i) for i in range(2)]
    for node, data in zip(honest_nodes, datas, strict=False):
        assert node.publish(data).accepted
    ids = [parse_update(d).update_id for d in datas]
    claim = Equivocation.of(manifest.run_id, r, HONEST[0].public_key, *ids)  # the second is HONEST[1]'s
    framed = EvidenceRecord(claim, eve.public_key, time.time()).sign(eve)
    as_other = EvidenceRecord(claim, HONEST[2].public_key, time.time())._body()
    forged = pack_pair(as_other, eve.sign(as_other))  # names another reporter, signed by Eve
    before = [defence(n) for n in honest_nodes]
    stored = run_spawned(
        store_values, honest_nodes[0].multiaddr(), evidence_key(manifest.run_id, r),
        [(b"framed", framed), (b"forged", forged)], 60.0,
    )  # fmt: skip
    assert stored == [True, True]

    def rejected(status: dict, reason: str) -> int:
        return status.get("evidence_rejected", {}).get(reason, 0)

    def all_rejected() -> bool:
        now = [defence(n) for n in honest_nodes]
        return all(
            rejected(a, reason) > rejected(b, reason)
            for a, b in zip(now, before, strict=True)
            for reason in ("wrong_author", "bad_record_signature")
        )

    wait_for(all_rejected, ROUND_S, "every honest node to reject both records")
    wait_for(
        lambda: all(n.status()["committed_round"] >= r for n in honest_nodes), ROUND_S + 10, f"round {r}"
    )
    for node, earlier in zip(honest_nodes, before, strict=True):
        banned = {b["node_id"] for b in earlier["bans"]}  # an earlier test's ban (Mallory's), if any
        assert {b["node_id"] for b in defence(node)["bans"]} == banned
        assert not any(p["banned"] for p in node.peers() if p["node_id"] not in banned)
    log = potluck_json("log", "--data-dir", str(honest_nodes[1].data_dir))
    assert log[-1]["round"] == r and log[-1]["updates"] == 2
    assert {HONEST[0].node_id, HONEST[1].node_id} <= set(log[-1]["contributors"])
