import os
from pathlib import Path

import numpy as np
import pytest

from potluck.hashing import tensor_hash, tensor_hashes, version_hash, version_hash_of
from potluck.store.versions import CorruptVersion, VersionNotFound, VersionStore


def _state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "layer.0.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "layer.0.bias": rng.standard_normal(8).astype(np.float32),
        "embed": rng.standard_normal((16, 4)).astype(np.float16),
        "steps": np.array([3], dtype=np.int64),
    }


def test_hash_is_independent_of_dict_order():
    state = _state()
    reversed_state = dict(reversed(list(state.items())))
    assert list(state) != list(reversed_state)
    assert version_hash(state) == version_hash(reversed_state)
    assert version_hash(state) == version_hash_of(tensor_hashes(state))


def test_hash_changes_when_one_byte_changes():
    state = _state()
    before = version_hash(state)
    raw = state["layer.0.bias"].view(np.uint8)
    raw[5] ^= 1
    assert version_hash(state) != before


def test_hash_covers_dtype_shape_and_name():
    a = np.zeros(4, np.float32)
    assert tensor_hash(a) != tensor_hash(a.reshape(2, 2))
    assert tensor_hash(a) != tensor_hash(a.view(np.int32))
    assert version_hash({"x": a}) != version_hash({"y": a})


def test_hash_is_byte_order_canonical():
    a = np.arange(5, dtype="<f4")
    assert tensor_hash(a) == tensor_hash(a.astype(">f4"))
    assert tensor_hash(np.asfortranarray(np.ones((3, 2), np.float32) * [1, 2])) == tensor_hash(
        np.ascontiguousarray(np.ones((3, 2), np.float32) * [1, 2])
    )


def test_put_get_round_trip_and_no_temp_file(tmp_path: Path):
    store = VersionStore(tmp_path)
    state = _state()
    version = store.put(state)
    assert version == version_hash(state)
    assert store.has(version)
    assert os.listdir(tmp_path) == [f"{version}.safetensors"]  # the temp file was renamed away
    loaded = store.get(version)
    assert sorted(loaded) == sorted(state)
    for name in state:
        assert loaded[name].dtype == state[name].dtype
        np.testing.assert_array_equal(loaded[name], state[name])
    assert store.put(state) == version  # idempotent
    assert os.listdir(tmp_path) == [f"{version}.safetensors"]


def test_corrupted_file_is_detected(tmp_path: Path):
    store = VersionStore(tmp_path)
    version = store.put(_state())
    path = store.path(version)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's bytes: still parses, hashes differently
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptVersion):
        store.get(version)
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CorruptVersion):
        store.get(version)


def test_missing_and_malformed_names(tmp_path: Path):
    store = VersionStore(tmp_path)
    with pytest.raises(VersionNotFound):
        store.get("0" * 64)
    assert not store.has("0" * 64)
    for bad in ["../etc/passwd", "A" * 64, "0" * 63]:
        with pytest.raises(ValueError):
            store.path(bad)
