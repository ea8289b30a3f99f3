import numpy as np
import pytest
import safetensors.numpy

from potluck.cli.update_files import apply_update_file, inspect_update, make_update
from potluck.hashing import version_hash
from potluck.identity import NodeIdentity
from potluck.store.versions import load_state
from potluck.updates.reasons import Reason, UpdateRejected


@pytest.fixture
def models(tmp_path):
    rng = np.random.default_rng(0)
    base = {"w": rng.standard_normal((64, 32)).astype(np.float32), "b": np.zeros(32, np.float32),
            "steps": np.array([7], np.int64)}  # fmt: skip
    tuned = {k: v.copy() for k, v in base.items()}
    tuned["w"][3, 4] += 5.0
    tuned["w"][10] += 0.001
    tuned["b"][7] = -2.0
    safetensors.numpy.save_file(base, str(tmp_path / "base.safetensors"))
    safetensors.numpy.save_file(tuned, str(tmp_path / "tuned.safetensors"))
    return tmp_path, base, tuned


def test_make_inspect_apply(models):
    path, base, _ = models
    identity = NodeIdentity.generate()
    data = make_update(path / "base.safetensors", path / "tuned.safetensors", identity, density=0.01,
                       values="fp16", round=2, run="r", seq=1, sample_count=64)  # fmt: skip
    info = inspect_update(data)
    assert info["valid"] and info["signature_ok"] and info["reason"] is None
    assert info["author"] == identity.node_id and info["base"] == version_hash(base)
    assert (info["run"], info["round"], info["seq"]) == ("r", 2, 1)
    assert {t["name"] for t in info["tensors"]} == {"w", "b"}  # the int tensor is not part of it
    assert info["nonzeros"] == 20 + 1 and info["compression_ratio"] > 10
    out_hash = apply_update_file(path / "base.safetensors", data, path / "out.safetensors")
    out = load_state(path / "out.safetensors")
    assert out_hash == version_hash(out)
    assert out["w"][3, 4] == pytest.approx(base["w"][3, 4] + 5.0, rel=1e-3)
    assert out["b"][7] == -2.0 and out["steps"][0] == 7
    with pytest.raises(UpdateRejected) as info:
        apply_update_file(path / "tuned.safetensors", data, path / "out2.safetensors")
    assert info.value.reason is Reason.UNKNOWN_BASE


def test_inspect_reports_bad_input(models):
    path, _, _ = models
    identity = NodeIdentity.generate()
    made = make_update(path / "base.safetensors", path / "tuned.safetensors", identity,
                       round=0, run="r", seq=1, sample_count=1)  # fmt: skip
    data = bytearray(made)
    data[-1] ^= 1
    info = inspect_update(bytes(data))
    assert info["signature_ok"] is False and info["valid"] is False and info["reason"] == "bad_signature"
    assert inspect_update(b"\x00garbage") == {
        "bytes": 8, "valid": False, "reason": "malformed", "detail": "7 trailing bytes"
    }  # fmt: skip


def test_inspect_and_apply_a_low_rank_update(models):
    from potluck.updates.codec import Update, encode_update
    from potluck.updates.lowrank import LowRankTensor, expand

    path, base, _ = models
    identity = NodeIdentity.generate()
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((64, 2)).astype(np.float32), rng.standard_normal((2, 32)).astype(np.float32)
    update = Update(
        "r", 0, version_hash(base), identity.public_key, 1, 8, (LowRankTensor("w", (64, 32), a, b),)
    )
    data = encode_update(update, identity, "fp16")
    info = inspect_update(data)
    assert info["valid"] and info["tensors"] == [
        {"name": "w", "shape": [64, 32], "nonzeros": 2 * 96, "bytes": 2 * 2 * 96, "form": "lowrank",
         "rank": 2, "values": "fp16"}
    ]  # fmt: skip
    apply_update_file(path / "base.safetensors", data, path / "out.safetensors")
    sent_a = a.astype(np.float16).astype(np.float32)
    sent_b = b.astype(np.float16).astype(np.float32)
    got = load_state(path / "out.safetensors")["w"]
    assert np.array_equal(got, (base["w"].astype(np.float64) + expand(sent_a, sent_b)).astype(np.float32))
