"""Modules travel between real nodes: published on a running node, fetched by a peer, kept byte for byte;
records a hostile peer offers (a forged signature, a taken name, other bytes than announced) are
refused and counted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from potluck.exchange.modules import trunk_of
from potluck.identity import NodeIdentity
from potluck.localswarm import wait_for
from potluck.modules.record import Module, module_id, sign_module
from potluck.runfiles import write_run
from tests.support.attacks import run_module_peddler
from tests.support.cli import potluck
from tests.support.spawned import run_spawned
from tests.support.swarm import connected_swarm

SMALL = {"n_layer": 1, "n_head": 2, "d_model": 32, "context": 32, "eval_bytes": 1024}
TRAIN = ("--shard", "poetry", "--steps", "2", "--gate-steps", "5", "--rank", "2")


def _module(run_id: str, author: NodeIdentity, name: str, seed: int = 0) -> bytes:
    """A record crafted for the run's trunk (rank 2 on one block's attn.c_attn), no training."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((32, 2)), rng.standard_normal((2, 96))
    adapters = {"transformer.h.0.attn.c_attn.weight": (a.astype(np.float32), b.astype(np.float32))}
    gate = rng.standard_normal(32).astype(np.float32)
    return sign_module(author, Module(run_id, name, author.public_key, 1, "0" * 64, "", adapters, gate, 0.0))


def _listed(node) -> dict[str, dict]:
    proc = potluck("modules", "--data-dir", str(node.data_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    return {m["name"]: m for m in json.loads(proc.stdout)}


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    root = tmp_path_factory.mktemp("modules-")
    run = write_run(root / "run.toml", "lm", task_args=SMALL, round_seconds=600)
    with connected_swarm(root / "swarm", 2, manifest=run.path) as swarm:
        yield swarm, run


def test_only_runs_whose_task_takes_modules_carry_them(tmp_path):
    lm = write_run(tmp_path / "lm.toml", "lm", task_args=SMALL).manifest
    trunk = trunk_of(lm)
    assert trunk is not None and trunk.run_id == lm.run_id and trunk.gate_dim == 32
    assert trunk.shapes["transformer.h.0.attn.c_attn.weight"] == (32, 96) and trunk.max_rank == lm.max_rank
    assert trunk_of(write_run(tmp_path / "toy.toml", "toy").manifest) is None


@pytest.mark.multiprocess
def test_a_module_published_on_a_running_node_reaches_its_peer(swarm):
    nodes, run = swarm
    a, b = nodes.nodes
    proc = potluck("module", "publish", "--data-dir", str(a.data_dir), "--manifest", str(run.path),
                   "--version", run.manifest.genesis, "--name", "verse", *TRAIN, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    published = json.loads(proc.stdout)
    wait_for(lambda: b.status()["modules"]["kept"] == 1, 30, "B to fetch the module")
    listed = _listed(b)
    assert listed == _listed(a) and listed["verse"]["id"] == published["id"]
    assert (b.data_dir / "modules/verse.module").read_bytes() == (
        a.data_dir / "modules/verse.module"
    ).read_bytes()
    status = b.status()["modules"]
    assert status["kept"] == 1 and status["fetched"] == 1 and not any(status["refused"].values())
    assert "1 kept, 1 fetched; refused: none" in potluck("status", "--data-dir", str(b.data_dir)).stdout


@pytest.mark.multiprocess
def test_bad_records_offered_by_a_peer_are_refused_and_counted(swarm, tmp_path):
    nodes, run = swarm
    a, b = nodes.nodes
    wait_for(lambda: b.status()["modules"]["kept"] == 1, 30, "B to keep A's module")
    run_id, mallory = run.manifest.run_id, NodeIdentity.generate()
    forged = bytearray(_module(run_id, mallory, "forged"))
    forged[-1] ^= (
        1  # the signature's last byte: announced under its own id, so only the signature check fails
    )
    taken = _module(run_id, mallory, "verse")  # a valid record under a name A owns
    sneaky = _module(run_id, mallory, "verse", seed=1)  # the same, announced under another name
    honest = _module(run_id, mallory, "decoy")  # announced, but other bytes served for it
    offers = [
        (module_id(bytes(forged)), "forged", mallory.public_key, bytes(forged)),
        (module_id(taken), "verse", mallory.public_key, taken),
        (module_id(sneaky), "prose", mallory.public_key, sneaky),
        # last (B avoids a holder that served other bytes): announced, but another record served for it
        (module_id(honest), "decoy", mallory.public_key, taken),
    ]
    before = b.status()["modules"]
    target = sum(before["refused"].values()) + 3
    peddler = (b.multiaddr(), run_id, offers, tmp_path / "peddler", b.rpc_address, target)
    run_spawned(run_module_peddler, *peddler, timeout=60)
    after = b.status()["modules"]
    assert after["refused"].get("bad_signature", 0) == before["refused"].get("bad_signature", 0) + 1
    assert after["refused"].get("name_taken", 0) == before["refused"].get("name_taken", 0) + 2
    assert after["bad_holder_fetches"] == before["bad_holder_fetches"] + 1
    assert set(_listed(b)) == {"verse"} and _listed(b)["verse"]["author"] == _listed(a)["verse"]["author"]
    assert a.status()["modules"]["kept"] == 1  # both nodes still answer


@pytest.mark.multiprocess
def test_a_joiner_publishes_a_module_that_reaches_the_other_nodes(swarm):
    """`potluck join --module`: trained on the run's current version, kept and announced through the
    joiner's node, fetched by the others byte for byte, then (--patches) a patch sent too; a second
    joiner cannot take the name."""
    nodes, run = swarm
    a, b = nodes.nodes[:2]
    small = ("--shard", "poetry", "--module-steps", "2", "--gate-steps", "5", "--module-rank", "2")
    patches = ("--patches", "--local-steps", "2", "--rounds", "1")
    joiner = nodes.add_contributor("joiner", "--module", "sonnets", *small, *patches, manifest=run.path)
    wait_for(lambda: "sonnets" in _listed(a) and "sonnets" in _listed(b), 60, "A and B to fetch the module")
    mine = _listed(joiner)["sonnets"]
    assert _listed(a)["sonnets"] == _listed(b)["sonnets"] == mine
    assert mine["author"] == joiner.status()["node_id"] and mine["version"] == 1 and mine["rank"] == 2
    assert mine["trunk"] == a.status()["version"]  # the version the open round collects on
    record = (joiner.data_dir / "modules/sonnets.module").read_bytes()
    for node in (a, b):
        assert (node.data_dir / "modules/sonnets.module").read_bytes() == record
    log = joiner.log_path.read_text()
    assert "module sonnets: adapter" in log and "module sonnets v1 kept and announced" in log
    me = mine["author"]
    wait_for(lambda: any(u["author"] == me for u in a.updates()), 30, "A to hold the joiner's patch")
    taker = nodes.add_contributor("taker", "--module", "sonnets", *small, manifest=run.path)
    assert taker.proc.wait(60) == 2, taker.log_tail()
    assert "module name already taken by another author: sonnets" in taker.log_tail(3)
    assert "module sonnets: adapter" not in taker.log_path.read_text()  # refused before training
    assert joiner.proc.poll() is None  # the author's node stays up, serving its module
