"""A round under attack, for tests with real nodes: a toy run, three honest updates and a sign-flipped
x1000 one published at the start of a round, and the version an independent merge of them gives."""

from __future__ import annotations

import hashlib

import numpy as np

from potluck.hashing import version_hash
from potluck.identity import NodeIdentity
from potluck.localswarm import LocalSwarm, next_collecting_round
from potluck.merge import get_strategy, next_state
from potluck.runfiles import write_run
from potluck.updates.codec import SparseTensor, Update, decode_update, encode_update
from potluck.updates.sparsify import sparsify


def make_run(tmp_path, round_s: float, task_args=None, **rules):
    """A signed toy-task manifest and its genesis in ``tmp_path``: (manifest, path, state, genesis hash)."""
    run = write_run(
        tmp_path / "run.toml", "toy", task_args=task_args, round_seconds=round_s, density=0.25, **rules
    )
    return run.manifest, run.path, run.state, run.genesis_hash


def run_swarm(tmp_path, manifest, path) -> LocalSwarm:
    """A local swarm (not started) whose nodes serve the run of ``manifest`` saved at ``path``."""
    return LocalSwarm.for_run(tmp_path / "swarm", manifest.run_id, path)


def add_trusting_and_liar(swarm: LocalSwarm, liar_module: str) -> tuple[list, str]:
    """A keeper that audits nothing (it can only learn of a lie from the fault the others publish) and a
    liar (``liar_module``) joined to ``swarm``'s running keepers: (the honest keepers, the liar's id),
    once every honest keeper sees the three others."""
    trusting = swarm.add_node(name="trusting", module="tests.engine.trusting_keeper")
    liar = swarm.add_node(name="liar", module=liar_module)
    for node in (trusting, liar):
        node.wait_ready(60)
    honest = [n for n in swarm.nodes if n is not liar]
    swarm.wait_all_see(len(swarm.nodes) - 1)
    return honest, liar.status()["node_id"]


def publish_attacked_round(
    nodes, manifest, state, genesis_hash, round_: int | None = None
) -> tuple[int, list[bytes]]:
    """Three honest updates and a sign-flipped x1000 copy of the first (by another key), published at
    the start of the next round (or for round ``round_`` at once: "ready" pacing), spread over ``nodes``:
    (round, the four signed updates)."""
    r = next_collecting_round(manifest) if round_ is None else round_
    rng = np.random.default_rng(r)
    authors = [NodeIdentity.generate() for _ in range(3)]
    honest = [
        Update(manifest.run_id, r, genesis_hash, a.public_key, 1, 10,
               tuple(sparsify(n, rng.standard_normal(t.shape).astype(np.float32) * 0.05, 0.25)
                     for n, t in state.items()))
        for a in authors
    ]  # fmt: skip
    mallory = NodeIdentity.generate()
    flipped = tuple(SparseTensor(t.name, t.shape, t.indices, -1000 * t.values) for t in honest[0].tensors)
    datas = [encode_update(u, a) for u, a in zip(honest, authors, strict=True)]
    datas.append(
        encode_update(Update(manifest.run_id, r, genesis_hash, mallory.public_key, 1, 10, flipped), mallory)
    )
    for i, data in enumerate(datas):
        reply = nodes[i % len(nodes)].publish(data)
        assert reply.accepted, reply.reason
    return r, datas


def expected_version(manifest, state, datas, r, strategy: str) -> str:
    """The version an independent merge of ``datas`` with ``strategy`` (default args) gives."""
    decoded = [decode_update(d) for d in datas]
    seed = int.from_bytes(hashlib.sha256(f"{manifest.run_id}/{r}".encode()).digest()[:8], "little")
    merged = get_strategy(strategy, {}).merge(decoded, [10.0] * len(decoded), round_seed=seed)
    return version_hash(next_state(state, merged, manifest.outer_lr))
