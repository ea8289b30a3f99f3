"""Versions kept as a chain of patches: every version comes back bit for bit, snapshots every N, a
damaged chain is CorruptVersion, and the bytes grow with the patches."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.hashing import version_hash
from potluck.store.versions import CorruptVersion, VersionStore


def _chain(store: VersionStore, n: int, seed: int = 0) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed)
    state = {
        "w": rng.standard_normal((64, 32)).astype(np.float32),
        "b": np.zeros(64, np.float16),
        "steps": np.array([0], np.int64),
    }
    out = [(store.put(state), state)]
    for _ in range(n):
        state = {k: v.copy() for k, v in state.items()}
        idx = rng.choice(state["w"].size, 30, replace=False)
        state["w"].reshape(-1)[idx] += rng.standard_normal(30).astype(np.float32)
        state["steps"] += 1
        out.append((store.put(state, parent=out[-1][0]), state))
    return out


def test_every_version_of_a_chain_comes_back_bit_for_bit(tmp_path) -> None:
    store = VersionStore(tmp_path, snapshot_every=4)
    chain = _chain(store, 9)
    kinds = ["patch" if store.is_patch(v) else "snapshot" for v, _ in chain]
    assert kinds == ["snapshot", "patch", "patch", "patch"] * 2 + ["snapshot", "patch"]
    fresh = VersionStore(tmp_path, snapshot_every=4)  # nothing cached
    for version, state in chain:
        got = fresh.get(version)
        assert version_hash(got) == version
        for name in state:
            assert got[name].dtype == state[name].dtype
            assert got[name].tobytes() == state[name].tobytes()
    assert [fresh.depth(v) for v, _ in chain] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_negative_zero_and_nan_bits_survive_a_patch(tmp_path) -> None:
    store = VersionStore(tmp_path, snapshot_every=8)
    a = {"x": np.zeros(100, np.float32)}
    b = {"x": a["x"].copy()}
    b["x"][3] = -0.0
    b["x"][7] = np.frombuffer(np.uint32(0x7FC00001).tobytes(), np.float32)[0]
    va = store.put(a)
    vb = store.put(b, parent=va)
    assert store.is_patch(vb)
    assert VersionStore(tmp_path).get(vb)["x"].tobytes() == b["x"].tobytes()


def test_a_damaged_patch_or_a_missing_link_is_corrupt(tmp_path) -> None:
    store = VersionStore(tmp_path, snapshot_every=10)
    chain = _chain(store, 4)
    path = store.patch_path(chain[2][0])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptVersion, match=r"through its chain|damaged chain"):
        VersionStore(tmp_path).get(chain[4][0])
    assert VersionStore(tmp_path).get(chain[1][0])  # before the damage: fine
    store.delete(chain[3][0])
    with pytest.raises(CorruptVersion, match="which is not stored"):
        VersionStore(tmp_path).get(chain[4][0])


def test_a_large_change_is_stored_whole(tmp_path) -> None:
    store = VersionStore(tmp_path, snapshot_every=10)
    a = {"x": np.zeros(1000, np.float32)}
    va = store.put(a)
    vb = store.put({"x": np.ones(1000, np.float32)}, parent=va)
    assert not store.is_patch(vb)


def test_the_bytes_grow_with_the_patches(tmp_path) -> None:
    store = VersionStore(tmp_path, snapshot_every=50)
    chain = _chain(store, 20)
    sizes = {kind: 0 for kind in ("snapshot", "patch")}
    for _, kind, size in store.stored():
        sizes[kind] += size
    whole = VersionStore(tmp_path / "whole")
    full = whole.path(whole.put(chain[0][1])).stat().st_size
    # 30 changed float32 + 1 int64 per round: 30 * 8 + 12 bytes of payload, plus a ~500-byte header
    assert sizes["patch"] < 20 * (252 + 550) < 20 * full
