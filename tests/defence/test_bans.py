"""The ban registry: general (any reason), first ban kept, persistent and atomic across restarts."""

import json

import pytest

from potluck.defence.bans import BanRegistry, BanStoreError

A, B = b"\x01" * 32, b"\x02" * 32


def test_ban_is_general_and_the_first_one_is_kept(tmp_path):
    bans = BanRegistry(tmp_path / "bans.json")
    heard = []
    bans.subscribe(heard.append)
    assert not bans.is_banned(A) and bans.list() == []
    assert bans.ban(A, "equivocation", 7, "e1" * 32, evidence=b"proof")
    assert not bans.ban(A, "lying_reducer", 9, "f00d")  # already banned: nothing changes
    assert bans.ban(B, "lying_reducer", 3, "fault-id")
    assert bans.is_banned(A) and bans.is_banned(B)
    assert [(b.node_id, b.reason, b.round) for b in bans.list()] == [
        (B, "lying_reducer", 3), (A, "equivocation", 7)
    ]  # fmt: skip
    assert bans.get(A).evidence == b"proof" and bans.by_evidence("fault-id").node_id == B
    assert [b.node_id for b in heard] == [A, B]


def test_bans_survive_a_restart(tmp_path):
    path = tmp_path / "bans" / "run.json"
    BanRegistry(path).ban(A, "equivocation", 7, "e1" * 32, evidence=b"proof")
    again = BanRegistry(path)
    assert again.is_banned(A) and again.get(A).evidence == b"proof" and again.get(A).round == 7
    assert not list(path.parent.glob("*.tmp"))  # written through a temp file, renamed


def test_an_unreadable_ban_file_refuses_rather_than_forgets(tmp_path):
    path = tmp_path / "bans.json"
    path.write_text("{not json")
    with pytest.raises(BanStoreError):
        BanRegistry(path)
    path.write_text(json.dumps({"version": 1, "bans": [{"node_id": "00", "reason": "x", "round": 1}]}))
    with pytest.raises(BanStoreError):
        BanRegistry(path)


def test_bad_arguments_raise(tmp_path):
    bans = BanRegistry()
    for args in ((b"short", "r", 1, "e"), (A, "", 1, "e"), (A, "r", -1, "e"), (A, "r", 1, "")):
        with pytest.raises(ValueError):
            bans.ban(*args)
    assert len(bans) == 0
