"""potluck.modules.record and .library: the signed module record, its checks, name ownership."""

import dataclasses

import numpy as np
import pytest

from potluck.identity import NodeIdentity
from potluck.modules.library import ModuleLibrary
from potluck.modules.record import (
    FORMAT,
    Module,
    ModuleRefused,
    check_against,
    module_id,
    open_module,
    sign_module,
)
from potluck.modules.routing import merged_deltas, prefix_mean, route_weights
from potluck.updates.lowrank import expand

SHAPES = {"w1": (6, 4), "w2": (4, 5), "bias": (4,)}
TRUNK = "ab" * 32


def make(
    identity: NodeIdentity, name: str = "bard", version: int = 1, rank: int = 2, seed: int = 0
) -> Module:
    rng = np.random.default_rng(seed)
    adapters = {
        t: (
            rng.standard_normal((r, rank)).astype(np.float32),
            rng.standard_normal((rank, c)).astype(np.float32),
        )
        for t, (r, c) in (("w1", SHAPES["w1"]), ("w2", SHAPES["w2"]))
    }
    gate = rng.standard_normal(4).astype(np.float32)
    return Module("run", name, identity.public_key, version, TRUNK, "plays", adapters, gate, 0.5)


def test_round_trip_and_id():
    me = NodeIdentity.generate()
    m = make(me)
    signed = sign_module(me, m)
    got = open_module(signed)
    assert (got.name, got.author, got.version, got.trunk, got.description) == (
        "bard",
        me.public_key,
        1,
        TRUNK,
        "plays",
    )
    for t, (a, b) in m.adapters.items():
        assert np.array_equal(got.adapters[t][0], a) and np.array_equal(got.adapters[t][1], b)
    assert np.array_equal(got.gate_w, m.gate_w) and got.gate_b == 0.5 and got.max_rank == 2
    assert module_id(signed) == module_id(sign_module(me, m)) != module_id(sign_module(me, make(me, seed=1)))
    check_against(got, "run", SHAPES, 4)
    check_against(got, "run", SHAPES, 4, max_rank=2)


def test_signature_by_the_author_only():
    me, other = NodeIdentity.generate(), NodeIdentity.generate()
    with pytest.raises(ValueError):
        sign_module(other, make(me))
    signed = bytearray(sign_module(me, make(me)))
    signed[-1] ^= 1  # the signature's last byte
    with pytest.raises(ModuleRefused) as info:
        open_module(bytes(signed))
    assert info.value.reason == "bad_signature"


def resign(me: NodeIdentity, signed: bytes, change) -> bytes:
    fields, _, _ = FORMAT.open(signed)
    change(fields)
    return FORMAT.sign(me, me.public_key, FORMAT.body(*fields))


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda f: f.__setitem__(1, "Bad Name"), "malformed"),
        (lambda f: f.__setitem__(3, 0), "malformed"),
        (lambda f: f.__setitem__(4, "trunk"), "malformed"),
        (lambda f: f.__setitem__(6, []), "malformed"),
        (lambda f: f[6][0].__setitem__(3, 5), "rank_exceeded"),  # rank 5 > min(6, 4)
        (lambda f: f[6][0].__setitem__(4, b"\x00" * 3), "malformed"),
        (lambda f: f[6][0].__setitem__(4, np.full(12, np.nan, "<f4").tobytes()), "non_finite"),
        (lambda f: f[6].reverse(), "malformed"),  # not sorted by tensor
        (lambda f: f.__setitem__(7, [b"\x00" * 16, float("inf")]), "non_finite"),
    ],
)
def test_bad_records_refused(change, reason):
    me = NodeIdentity.generate()
    with pytest.raises(ModuleRefused) as info:
        open_module(resign(me, sign_module(me, make(me)), change))
    assert info.value.reason == reason


def test_checked_against_the_trunk():
    me = NodeIdentity.generate()
    m = make(me, rank=3)
    with pytest.raises(ModuleRefused, match="rank 3 > the run's 2") as info:
        check_against(m, "run", SHAPES, 4, max_rank=2)
    assert info.value.reason == "rank_exceeded"
    with pytest.raises(ModuleRefused, match="no tensor 'w2'"):
        check_against(m, "run", {"w1": (6, 4)}, 4)
    with pytest.raises(ModuleRefused, match=r"w1 is \(4, 6\) in the trunk"):
        check_against(m, "run", {**SHAPES, "w1": (4, 6)}, 4)
    with pytest.raises(ModuleRefused, match="gate width 4, the trunk's is 8"):
        check_against(m, "run", SHAPES, 8)
    with pytest.raises(ModuleRefused) as info:
        check_against(m, "other-run", SHAPES, 4)
    assert info.value.reason == "wrong_run"


def test_library_name_ownership_and_versions():
    me, other = NodeIdentity.generate(), NodeIdentity.generate()
    lib = ModuleLibrary()
    v1, v2 = make(me), make(me, version=2, seed=3)
    assert lib.admit("id1", v1) == "kept"
    with pytest.raises(ModuleRefused, match="module name already taken by another author") as info:
        lib.admit("id9", make(other, version=5))
    assert info.value.reason == "name_taken"
    assert lib.admit("id2", v2) == "superseded" and lib.get("bard").module is v2
    for mid, m, reason in (("id2", v2, "duplicate"), ("id3", v1, "stale_version")):
        with pytest.raises(ModuleRefused) as info:
            lib.admit(mid, m)
        assert info.value.reason == reason
    assert lib.next_version("bard", me.public_key) == 3 and lib.next_version("new", other.public_key) == 1
    with pytest.raises(ModuleRefused, match="already taken by another author: bard"):
        lib.next_version("bard", other.public_key)
    assert lib.admit("id4", make(other, name="psalm")) == "kept"
    assert lib.names() == ["bard", "psalm"] and [m.name for m in lib.select(["psalm"])] == ["psalm"]
    with pytest.raises(KeyError, match="no module named 'nope'"):
        lib.select(["nope"])


def test_route_weights_rule():
    scores = np.array([[1.0, 3.0, 2.0], [0.0, 0.0, -1.0]])
    top1 = route_weights(scores, 1)
    assert top1.tolist() == [[0, 1, 0], [1, 0, 0]]  # a tie goes to the lower index
    top2 = route_weights(scores, 2)
    e = np.exp([3.0, 2.0])
    assert np.allclose(top2[0], [0, e[0] / e.sum(), e[1] / e.sum()]) and np.allclose(top2[1], [0.5, 0.5, 0])
    assert np.allclose(route_weights(scores, 3).sum(-1), 1.0)
    with pytest.raises(ValueError, match="1 <= k <= 3"):
        route_weights(scores, 4)


def test_merged_deltas_mean_exact():
    me = NodeIdentity.generate()
    m1, m2 = (
        make(me, seed=1),
        dataclasses.replace(make(me, seed=2), adapters={"w1": make(me, seed=2).adapters["w1"]}),
    )
    merged = merged_deltas([m1, m2])
    want_w1 = ((expand(*m1.adapters["w1"]).astype(np.float64) + expand(*m2.adapters["w1"])) / 2).astype(
        np.float32
    )
    assert np.array_equal(merged["w1"], want_w1)
    assert np.array_equal(
        merged["w2"], (expand(*m1.adapters["w2"]).astype(np.float64) / 2).astype(np.float32)
    )
    assert merged_deltas([]) == {}


def test_prefix_mean_is_causal():

    s = np.array([[[1.0, 0.0], [3.0, 2.0], [2.0, 4.0]]])  # (B=1, T=3, M=2)
    got = prefix_mean(s)
    assert np.allclose(got[0], [[1, 0], [2, 1], [2, 2]])
    s2 = s.copy()
    s2[0, 2] = [100.0, -100.0]  # a later token does not change an earlier one's score
    assert np.allclose(prefix_mean(s2)[0, :2], got[0, :2])
