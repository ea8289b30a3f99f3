import hashlib
import tomllib
from dataclasses import replace

import msgpack
import pytest

from potluck.identity import NodeIdentity
from potluck.manifest import Manifest, ManifestError, create_manifest
from potluck.runfiles import load_manifest, manifest_toml, save_manifest

GENESIS = "ab" * 32


def _manifest(**rules) -> tuple[NodeIdentity, Manifest]:
    identity = NodeIdentity.generate()
    rules.setdefault("task_args", {"hidden": 32, "name": 'we"ird\\ \n\x01 é', "lr": 0.1})
    rules.setdefault("round_seconds", 30)
    m = create_manifest(identity, "toy", GENESIS, start_time=1_700_000_000.25, **rules)
    return identity, m


def test_create_signs_and_normalizes():
    identity, m = _manifest(allow=["cd" * 32, "01" * 32, "cd" * 32], admission="allowlist", quorum=2)
    assert m.verify() and m.creator == identity.node_id
    assert m.round_seconds == 30.0 and type(m.round_seconds) is float
    assert m.allow == ("01" * 32, "cd" * 32)
    assert m.admits("01" * 32) and not m.admits("ef" * 32)
    assert m.run_id == hashlib.sha256(m.to_bytes()).hexdigest()
    assert m.update_weight(50_000) == m.weight_cap and m.update_weight(3) == 3


def test_body_is_canonical_sorted_msgpack():
    _, m = _manifest()
    domain, values = msgpack.unpackb(m.body())
    assert domain == "potluck/manifest/v1"
    assert list(values) == sorted(values)
    assert list(values["task_args"]) == sorted(values["task_args"])


def test_bytes_round_trip_and_run_id_check():
    _, m = _manifest(max_update_norm=5.0)
    data = m.to_bytes()
    back = Manifest.from_bytes(data, m.run_id)
    assert back == m and back.run_id == m.run_id
    with pytest.raises(ManifestError, match="run id"):
        Manifest.from_bytes(data, "00" * 32)


def test_toml_round_trip(tmp_path):
    _, m = _manifest(max_update_norm=2.5, outer_lr=0.7, density=0.05, values="fp16")
    path = tmp_path / "manifest.toml"
    save_manifest(m, path)
    tomllib.loads(path.read_text())  # plain TOML
    back = load_manifest(path)
    assert back == m and back.run_id == m.run_id and back.to_bytes() == m.to_bytes()
    _, m2 = _manifest(task_args={})
    save_manifest(m2, path)
    assert load_manifest(path) == m2 and load_manifest(path).max_update_norm is None


def test_edited_toml_is_refused(tmp_path):
    _, m = _manifest()
    path = tmp_path / "manifest.toml"
    path.write_text(manifest_toml(m).replace("quorum = 1", "quorum = 2"))
    with pytest.raises(ManifestError, match="signature does not match"):
        load_manifest(path)
    path.write_text(manifest_toml(m).replace("[task_args]", "[task_args"))
    with pytest.raises(ManifestError, match="not valid TOML"):
        load_manifest(path)
    path.write_text(manifest_toml(m) + "bogus = 1\n")  # lands in [task_args]: changes the body
    with pytest.raises(ManifestError):
        load_manifest(path)
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "missing.toml")


def test_forged_or_broken_bytes_raise_manifest_error_only():
    _, m = _manifest()
    other = NodeIdentity.generate()
    forged = replace(m, signature=other.sign(hashlib.sha256(m.body()).digest()))
    with pytest.raises(ManifestError, match="signature"):
        Manifest.from_bytes(forged.to_bytes())
    data = m.to_bytes()
    bad_inputs = [
        b"",
        b"\xc1",
        data[:-1],
        data + b"\x00",
        b"\x91" * 100_000,
        msgpack.packb([1, 2]),
        msgpack.packb([msgpack.packb(["potluck/manifest/v1", {"task": 1}]), b"x" * 64]),
        msgpack.packb([msgpack.packb(["potluck/update/v1", {}]), b"x" * 64]),
    ]
    for i in range(0, len(data), 7):
        flipped = bytearray(data)
        flipped[i] ^= 0x55
        bad_inputs.append(bytes(flipped))
    for bad in bad_inputs:
        with pytest.raises(ManifestError):
            Manifest.from_bytes(bad)


def test_non_canonical_body_refused():
    identity, m = _manifest()
    domain, values = msgpack.unpackb(m.body())
    values["round_seconds"] = 30  # int instead of float: same value, different bytes
    body = msgpack.packb([domain, values])
    data = msgpack.packb([body, identity.sign(hashlib.sha256(body).digest())])
    with pytest.raises(ManifestError, match="canonical"):
        Manifest.from_bytes(data)


@pytest.mark.parametrize(
    "rules",
    [{"quorum": 0}, {"round_seconds": 0}, {"density": 1.5}, {"values": "int4"}, {"admission": "closed"},
     {"allow": ["xyz"]}, {"outer_lr": float("nan")}, {"weight_cap": 0}, {"task_args": {"a": True}},
     {"task_args": {"a": [1]}}, {"weighting": "equal"}, {"placement": "butterfly"}, {"placement": ""},
     {"pacing": "eager"}, {"target_samples": -1}, {"target_samples": 1.5}, {"max_rank": 0},
     {"groups": ["no-colon"]}, {"groups": "a:freeze"}, {"groups": ["a:max_rank=x"]},
     {"start_density": 0.005}, {"start_rounds": 30}, {"start_density": 1.5, "start_rounds": 3},
     {"start_density": -0.1, "start_rounds": 3}, {"start_density": 0.01, "start_rounds": 2.5}],
)  # fmt: skip
def test_invalid_rules_raise(rules):
    with pytest.raises(ManifestError):
        _manifest(**rules)


def test_unsigned_manifest_has_no_bytes():
    m = Manifest(task="toy", genesis=GENESIS, creator="00" * 32)
    with pytest.raises(ManifestError, match="not signed"):
        m.to_bytes()


def test_probation_rounds_keep_older_manifests_bytes():
    _, m = _manifest()
    assert m.probation_rounds == 0 and "probation_rounds" not in msgpack.unpackb(m.body())[1]
    identity, p = _manifest(probation_rounds=3)
    assert msgpack.unpackb(p.body())[1]["probation_rounds"] == 3
    assert Manifest.from_bytes(p.to_bytes(), p.run_id).probation_rounds == 3
    domain, values = msgpack.unpackb(m.body())
    values["probation_rounds"] = 0  # the default spelled out: not the canonical body
    body = msgpack.packb([domain, dict(sorted(values.items()))])
    with pytest.raises(ManifestError, match="canonical"):
        Manifest.from_bytes(msgpack.packb([body, identity.sign(hashlib.sha256(body).digest())]))


def test_placement_keeps_older_manifests_bytes_and_round_trips(tmp_path):
    _, m = _manifest()
    assert m.placement == "auto" and "placement" not in msgpack.unpackb(m.body())[1]
    _, p = _manifest(placement="allreduce")
    assert msgpack.unpackb(p.body())[1]["placement"] == "allreduce" and p.run_id != m.run_id
    assert Manifest.from_bytes(p.to_bytes(), p.run_id).placement == "allreduce"
    save_manifest(p, tmp_path / "run.toml")
    assert load_manifest(tmp_path / "run.toml") == p


def test_sign_values_and_model_topk_keep_older_manifests_bytes_and_round_trip(tmp_path):
    _, m = _manifest()
    assert m.topk_scope == "tensor" and "topk_scope" not in msgpack.unpackb(m.body())[1]
    _, p = _manifest(values="sign", topk_scope="model")
    assert (msgpack.unpackb(p.body())[1]["topk_scope"], p.values) == ("model", "sign")
    assert Manifest.from_bytes(p.to_bytes(), p.run_id).topk_scope == "model"
    save_manifest(p, tmp_path / "run.toml")
    assert load_manifest(tmp_path / "run.toml") == p
    with pytest.raises(ManifestError):
        _manifest(topk_scope="layer")


def test_pacing_keeps_older_manifests_bytes_and_round_trips(tmp_path):
    _, m = _manifest()
    assert (m.pacing, m.target_samples) == ("clock", 0)
    assert not {"pacing", "target_samples"} & set(msgpack.unpackb(m.body())[1])
    _, p = _manifest(pacing="ready", target_samples=500)
    assert msgpack.unpackb(p.body())[1]["pacing"] == "ready" and p.run_id != m.run_id
    assert Manifest.from_bytes(p.to_bytes(), p.run_id).target_samples == 500
    save_manifest(p, tmp_path / "run.toml")
    assert load_manifest(tmp_path / "run.toml") == p


def test_groups_and_max_rank_keep_older_manifests_bytes_and_round_trip(tmp_path):
    _, m = _manifest()
    assert (m.groups, m.max_rank) == ((), 64)
    assert not {"groups", "max_rank"} & set(msgpack.unpackb(m.body())[1])
    _, p = _manifest(groups=["*.wte.*:freeze", "h.*: max_rank=8 , strategy=ties"], max_rank=16)
    assert p.groups == ("*.wte.*:freeze", "h.*:strategy=ties,max_rank=8")  # canonical text, order kept
    assert msgpack.unpackb(p.body())[1]["groups"] == list(p.groups) and p.run_id != m.run_id
    assert Manifest.from_bytes(p.to_bytes(), p.run_id).group_rules.rule_for("h.1").max_rank == 8
    save_manifest(p, tmp_path / "run.toml")
    assert load_manifest(tmp_path / "run.toml") == p


def test_a_tampered_allowlist_is_another_run_or_a_bad_signature(tmp_path):
    creator, m = _manifest(admission="allowlist", allow=["01" * 32], max_update_norm=3.0)
    edited = replace(m, allow=("01" * 32, "02" * 32))
    with pytest.raises(ManifestError, match="signature"):
        Manifest.from_bytes(edited.to_bytes())  # the creator's signature does not cover it
    resigned = create_manifest(creator, "toy", GENESIS, start_time=m.start_time, created=m.created,
                               task_args=m.task_args, admission="allowlist", allow=["01" * 32, "02" * 32],
                               max_update_norm=3.0)  # fmt: skip
    assert resigned.run_id != m.run_id  # re-signed by the creator: a different run
    path = tmp_path / "run.toml"
    path.write_text(manifest_toml(m).replace('"' + "01" * 32 + '"', '"' + "02" * 32 + '"'))
    with pytest.raises(ManifestError, match="signature does not match"):
        load_manifest(path)


def test_a_probe_table_is_signed_canonical_and_round_trips_and_an_old_manifest_is_unchanged(tmp_path):
    _, old = _manifest()
    assert "probe" not in msgpack.unpackb(old.body())[1] and old.probe == {}  # the body as before
    _, m = _manifest(probe={"set": "cd" * 32, "per_class": 4})
    assert m.probe == {"floor": 0.0, "frac": 0.5, "per_class": 4, "set": "cd" * 32}
    assert msgpack.unpackb(m.body())[1]["probe"] == m.probe
    assert Manifest.from_bytes(m.to_bytes(), m.run_id) == m
    save_manifest(m, tmp_path / "run.toml")
    assert load_manifest(tmp_path / "run.toml").run_id == m.run_id
    save_manifest(old, tmp_path / "old.toml")
    assert "[probe]" not in (tmp_path / "old.toml").read_text()
    with pytest.raises(ManifestError, match="probe needs set = HASH"):
        _manifest(probe={"per_class": 4})
    with pytest.raises(ManifestError, match=r"probe\.frac must be"):
        replace(m, probe={"set": "cd" * 32, "frac": -1.0})


def test_sparse_start_keeps_older_manifests_bytes_and_round_trips(tmp_path):
    _, m = _manifest()
    assert (m.start_density, m.start_rounds) == (0.0, 0)
    assert not {"start_density", "start_rounds"} & set(msgpack.unpackb(m.body())[1])
    _, p = _manifest(density=0.015, start_density=0.005, start_rounds=30)
    values = msgpack.unpackb(p.body())[1]
    assert (values["start_density"], values["start_rounds"]) == (0.005, 30) and p.run_id != m.run_id
    assert Manifest.from_bytes(p.to_bytes(), p.run_id).start_rounds == 30
    save_manifest(p, tmp_path / "run.toml")
    assert load_manifest(tmp_path / "run.toml") == p
    with pytest.raises(ManifestError, match="start_density in"):
        _manifest(start_density=0.005)
