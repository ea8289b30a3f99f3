import msgpack
import numpy as np
import pytest

from potluck.hashing import tensor_hashes, version_hash
from potluck.identity import NodeIdentity
from potluck.rounds.commit import (
    Commit,
    CommitError,
    CommitSignature,
    QuorumTracker,
    commit_id,
    sign_commit,
    verify_signature,
)

NODES = [NodeIdentity.generate() for _ in range(5)]
RUN = "ab" * 32


def _commit(round_=3, seed=0, participants=NODES[:4], **kw) -> Commit:
    state = {"w": np.full(4, seed, np.float32), "b": np.zeros(2, np.float32)}
    return Commit(
        run_id=RUN, round=round_, parent="11" * 32, version=version_hash(state),
        tensor_hashes=tensor_hashes(state), updates=kw.get("updates", ["ff" * 32, "01" * 32]),
        contributors=[NODES[0].node_id], participants=[n.node_id for n in participants], total_weight=42,
        record=kw.get("record", ()),
    )  # fmt: skip


def test_canonical_body_and_round_trip():
    c = _commit()
    assert c.updates == ("01" * 32, "ff" * 32)  # sorted on construction
    domain, *_ = msgpack.unpackb(c.body())
    assert domain == "potluck/commit/v1"
    back = Commit.from_bytes(c.to_bytes())
    assert back == c and commit_id(back) == commit_id(c) == c.id
    assert commit_id(_commit(seed=1)) != c.id


def test_a_record_runs_commit_names_its_record_in_v2_and_every_other_stays_v1():
    scores = [(NODES[2].node_id, -1.5), (NODES[0].node_id, 0.25)]
    c = _commit(record=scores)
    assert c.record == tuple(sorted(scores))  # sorted by author on construction
    domain, *fields = msgpack.unpackb(c.body())
    assert domain == "potluck/commit/v2" and fields[:9] == msgpack.unpackb(_commit().body())[1:]
    assert fields[9] == [[bytes.fromhex(a), s] for a, s in sorted(scores)]
    back = Commit.from_bytes(c.to_bytes())
    assert back == c and back.id == c.id != _commit().id  # the record is signed with the rest
    assert _commit(record=[(NODES[2].node_id, -1.25), (NODES[0].node_id, 0.25)]).id != c.id
    for bad, message in [
        ([(NODES[0].node_id, 1.0), (NODES[0].node_id, 2.0)], "duplicate recorded author"),
        ([(NODES[0].node_id, float("nan"))], "must be a float within 1e12"),
        ([(NODES[0].node_id, 1)], "must be a float"),
        ([("zz", 1.0)], "64 lowercase hex"),
    ]:
        with pytest.raises(CommitError, match=message):
            _commit(record=bad)
    v1 = msgpack.unpackb(_commit().body())
    for fields_v2 in [
        ["potluck/commit/v2", *v1[1:], []],  # v2 only with a record: else a v1 commit would have two bodies
        ["potluck/commit/v2", *v1[1:], [[bytes.fromhex(NODES[0].node_id), 1]]],
        ["potluck/commit/v2", *v1[1:], [[b"x", 1.0]]],
        ["potluck/commit/v2", *v1[1:]],
        ["potluck/commit/v1", *v1[1:], [[bytes.fromhex(NODES[0].node_id), 1.0]]],
    ]:
        with pytest.raises(CommitError):
            Commit.from_bytes(msgpack.packb(fields_v2))


def test_sign_and_verify():
    c = _commit()
    sig = sign_commit(c, NODES[1])
    assert verify_signature(c, sig)
    assert not verify_signature(_commit(seed=1), sig)
    assert not verify_signature(c, CommitSignature(NODES[2].node_id, sig.signature))
    cid, back = CommitSignature.from_bytes(sig.to_bytes(c.id))
    assert cid == c.id and back == sig


def test_inconsistent_commits_refused():
    with pytest.raises(CommitError, match="version"):
        Commit(RUN, 0, "11" * 32, "22" * 32, {"w": "33" * 32}, participants=[NODES[0].node_id])
    with pytest.raises(CommitError, match="duplicate"):
        _commit(updates=["01" * 32, "01" * 32])
    with pytest.raises(CommitError, match="participant"):
        _commit(participants=[])
    with pytest.raises(CommitError):
        _commit(round_=-1)


def test_bad_bytes_raise_commit_error_only():
    c = _commit()
    data = c.to_bytes()
    fields = msgpack.unpackb(data)
    unsorted = list(fields)
    unsorted[6] = list(reversed(unsorted[6]))
    bad = [b"", b"\xc1", data[:-1], data + b"\x00", b"\x91" * 100_000, msgpack.packb([1] * 10),
           msgpack.packb(unsorted), msgpack.packb(["potluck/update/v1", *fields[1:]]),
           msgpack.packb([*fields[:8], [], 1]), msgpack.packb([*fields[:9], -1])]  # fmt: skip
    for b in bad:
        with pytest.raises(CommitError):
            Commit.from_bytes(b)
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x41
        b = bytes(flipped)
        try:
            back = Commit.from_bytes(b)
        except CommitError:
            continue
        assert back.body() == b  # a flip that still parses must be a different, canonical commit
    sig = sign_commit(c, NODES[0]).to_bytes(c.id)
    for b in [b"", sig[:-1], sig + b"\x00", msgpack.packb(["x", b"", b"", b""]), b"\x91" * 1000]:
        with pytest.raises(CommitError):
            CommitSignature.from_bytes(b)


def test_quorum_counts_valid_participant_signatures_once():
    c = _commit()
    t = QuorumTracker(RUN, 3, quorum=3)
    assert t.add(c, sign_commit(c, NODES[0]))
    assert not t.add(c, sign_commit(c, NODES[0]))  # counted once
    assert not t.add(c, sign_commit(c, NODES[4]))  # not a participant
    assert not t.add(c, CommitSignature(NODES[1].node_id, b"\x00" * 64))  # invalid
    assert not t.add(_commit(round_=4), sign_commit(_commit(round_=4), NODES[1]))  # other round
    assert t.count(c.id) == 1 and t.winner() is None
    assert t.add(c, sign_commit(c, NODES[1]))
    assert t.winner() is None
    assert t.add(c, sign_commit(c, NODES[2]))
    assert t.winner() == c and t.count(c.id) == 3


def test_signatures_before_body():
    c = _commit()
    t = QuorumTracker(RUN, 3, quorum=2)
    for node in (NODES[0], NODES[4], NODES[1]):
        assert t.add_signature(c.id, sign_commit(c, node))
    assert t.count(c.id) == 0 and t.winner() is None
    t.add_commit(c)
    assert t.count(c.id) == 2  # NODES[4] dropped: not a participant
    assert [s.node_id for s in t.signatures(c.id)] == sorted([NODES[0].node_id, NODES[1].node_id])
    assert t.winner() == c


def test_fork_choice_after_healed_split():
    a, b = _commit(seed=1), _commit(seed=2)
    t = QuorumTracker(RUN, 3, quorum=2)
    for node in NODES[:2]:
        t.add(a, sign_commit(a, node))
    for node in NODES[2:4]:
        t.add(b, sign_commit(b, node))
    low, high = sorted([a, b], key=commit_id)
    assert t.winner() == low and t.committed() == [low, high]  # tie: lowest commit id
    t.add(high, sign_commit(high, NODES[0 if high is b else 2]))
    assert t.winner() == high  # more signatures
    assert t.equivocators() == [NODES[0 if high is b else 2].node_id]
