"""A data dir as a node leaves it after committing a few rounds: the manifest's copy, the genesis and
every version, the signed updates it merged, and the history with two participants' signatures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from potluck.hashing import tensor_hashes, version_hash
from potluck.identity import NodeIdentity
from potluck.manifest import Manifest
from potluck.rounds.commit import Commit, sign_commit
from potluck.rounds.fixedpoint import Layout
from potluck.rounds.merging import merge_round, round_seed
from potluck.runfiles import genesis_path, load_manifest, manifest_cache, write_run
from potluck.store.history import HISTORY_FILE, History
from potluck.store.updates import UpdateStore
from potluck.store.versions import VersionStore, load_state
from potluck.updates.codec import SparseTensor, Update, decode_update, encode_update
from potluck.vcs.repo import merge_strategy


@dataclass
class Built:
    data_dir: Path
    manifest: Manifest
    versions: list[str]  # genesis, then round 0, 1, ... versions
    updates: list[list[str]]  # per round, the update ids merged
    authors: list[NodeIdentity]


def make_update(author: NodeIdentity, manifest: Manifest, r: int, base: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    tensors = []
    for name, shape in (("l1.weight", (32, 16)), ("l2.bias", (4,))):
        size = int(np.prod(shape))
        idx = np.sort(rng.choice(size, max(1, size // 10), replace=False)).astype(np.int64)
        tensors.append(SparseTensor(name, shape, idx, rng.standard_normal(idx.size).astype(np.float32) * 0.1))
    update = Update(manifest.run_id, r, base, author.public_key, r + 1, 10 + 20 * seed % 50, tuple(tensors))
    return encode_update(update, author, manifest.values)


def build_history(
    tmp_path: Path,
    rounds: int = 3,
    tamper: int | None = None,
    snapshot_every: int = 1,
    run: Path | None = None,
    node: str = "node",
    quorum: int = 2,
    history_off: bool = False,
    authors: int = 2,
    **rules: object,
) -> Built:
    """``tamper``: that round's committed version is its merge with l2.bias moved by 1e-3 (a quorum that
    signed a wrong merge); ``rules``: manifest rules (probation: both authors start on probation);
    ``run``: an existing run's manifest (its genesis beside it) instead of a new run; ``node``: the
    data dir's name under ``tmp_path``; ``authors``: how many contribute each round. A history-aware
    strategy gets the last steps, computed here from the versions built so far (``history_off``:
    none, as a node that ignored the history would merge)."""
    identities = [NodeIdentity.generate() for _ in range(authors)]
    if run is None:
        run = write_run(tmp_path / "run.toml", "toy", quorum=quorum, outer_lr=0.5, **rules).path
    manifest = load_manifest(run)
    genesis = load_state(genesis_path(run))
    data_dir = tmp_path / node
    data_dir.mkdir()
    manifest_cache(data_dir, manifest.run_id).write_bytes(manifest.to_bytes())
    versions = VersionStore(data_dir / "versions", snapshot_every=snapshot_every)
    store = UpdateStore(data_dir / "updates")
    state = {k: np.asarray(v) for k, v in genesis.items()}
    base = versions.put(state)
    layout = Layout.from_state(state)
    strategy = merge_strategy(manifest)  # as the engine picks it (per-group strategies too)
    built = Built(data_dir, manifest, [base], [], identities)
    states = [state]  # every version so far, for a history-aware strategy's steps
    lookback = getattr(strategy, "history_rounds", 0)
    with History(data_dir / HISTORY_FILE, versions) as history:
        for r in range(rounds):
            signed = []
            for i, author in enumerate(identities):
                data = make_update(author, manifest, r, base, seed=10 * r + i)
                u = decode_update(data)
                store.put(u.update_id, data)
                signed.append(u)
            senior = r >= manifest.probation_rounds  # both contributed to every round so far
            weighted = [(manifest.update_weight(u.update.sample_count) if senior else 0, u) for u in signed]
            seed = round_seed(manifest.run_id, r)
            lr, f64 = manifest.outer_lr, np.float64
            steps = [  # the last changes of the model (a round that merged nothing made no step)
                {k: (states[-1 - j][k].astype(f64) - states[-2 - j][k].astype(f64)) / lr for k in state}
                for j in range(len(states) - 1)
                if version_hash(states[-1 - j]) != version_hash(states[-2 - j])
            ][:lookback]
            previous = ([] if history_off else steps) if lookback else None
            state, total = merge_round(state, layout, weighted, manifest, strategy, seed, previous=previous)
            states.append(state)
            if r == tamper:
                state["l2.bias"] = (state["l2.bias"] + np.float32(1e-3)).astype(np.float32)
            commit = Commit(
                manifest.run_id, r, base, version_hash(state), tensor_hashes(state),
                updates=[u.update_id for u in signed], contributors=[a.node_id for a in identities],
                participants=[a.node_id for a in identities], total_weight=total,
            )  # fmt: skip
            history.record(commit, [sign_commit(commit, a) for a in identities], state)
            base = commit.version
            built.versions.append(base)
            built.updates.append(sorted(u.update_id for u in signed))
    return built


def commit_revert(b: Built, author: NodeIdentity, reverts: list[str]) -> str:
    """Commit one more round to ``b``'s history holding only a revert of ``reverts`` by ``author``, its
    step computed as a node's gathered merge does (vcs/revert.round_step); the revert's update id."""
    from potluck.vcs import revert
    from potluck.vcs.repo import HistoryRepo

    r, base = len(b.updates), b.versions[-1]
    versions = VersionStore(b.data_dir / "versions")
    state = versions.get(base)
    layout = Layout.from_state(state)
    data = revert.as_update(author, b.manifest.run_id, r, base, reverts)
    signed = decode_update(data)
    UpdateStore(b.data_dir / "updates").put(signed.update_id, data)
    with HistoryRepo(b.data_dir) as repo:
        extra = revert.round_step(repo, [signed], r, layout, b.manifest.outer_lr)
    state, total = merge_round(state, layout, [(0, signed)], b.manifest, None, 0, extra)
    commit = Commit(
        b.manifest.run_id, r, base, version_hash(state), tensor_hashes(state), updates=[signed.update_id],
        contributors=[author.node_id], participants=[a.node_id for a in b.authors], total_weight=total,
    )  # fmt: skip
    with History(b.data_dir / HISTORY_FILE, versions) as history:
        history.record(commit, [sign_commit(commit, a) for a in b.authors], state)
    b.versions.append(commit.version)
    b.updates.append([signed.update_id])
    return signed.update_id


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return build_history(tmp_path)
