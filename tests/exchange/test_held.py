"""What the exchange holds, as the round engine reads it (engine/updates.py's AcceptedUpdates): each
accepted update decoded once, by the validator; an update held before a restart decoded on demand;
decoded copies of rounds the exchange no longer validates are dropped (the bytes stay on disk)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import potluck.exchange.service as service
from potluck.engine.updates import AcceptedUpdates
from potluck.exchange.service import UpdateExchange
from potluck.identity import NodeIdentity
from potluck.store.updates import UpdateStore
from potluck.updates.codec import decode_update, encode_update
from potluck.updates.validation import UpdateValidator, ValidationContext
from tests.updates.builders import BASE, RUN, SHAPES, build

AUTHOR = NodeIdentity.generate()


def exchange(root) -> UpdateExchange:
    me = NodeIdentity.generate()
    host = SimpleNamespace(peer_id=me.peer_id, call_soon=lambda callback: callback())
    validator = UpdateValidator(ValidationContext(RUN, 5, SHAPES, frozenset({BASE})))
    return UpdateExchange(host, me, RUN, UpdateStore(root / "updates"), validator, lambda peer: [])


def test_an_accepted_update_is_handed_on_as_the_validator_decoded_it(tmp_path, monkeypatch):
    x = exchange(tmp_path)
    assert isinstance(x, AcceptedUpdates)
    data = encode_update(build(AUTHOR), AUTHOR)
    held = x._accept(data, "published")

    def no_second_decode(*args, **kwargs):
        raise AssertionError("decoded twice")

    monkeypatch.setattr(service, "decode_update", no_second_decode)
    signed = x.decoded(held.update_id)
    assert signed.update_id == held.update_id and signed.update.author == AUTHOR.public_key
    assert x.decoded(held.update_id) is signed
    assert [u.update_id for u in x.holding(5)] == [held.update_id] and x.holding(6) == []
    assert x.held_update(held.update_id) == held and x.held_update("00" * 32) is None
    with pytest.raises(KeyError):
        x.decoded("00" * 32)
    with pytest.raises(TypeError):
        x.held[held.update_id] = held  # read-only: only the exchange holds updates


def test_stored_and_older_updates_are_decoded_again_from_disk(tmp_path, monkeypatch):
    decodes = []
    monkeypatch.setattr(service, "decode_update", lambda *a: decodes.append(1) or decode_update(*a))
    x = exchange(tmp_path)
    data = encode_update(build(AUTHOR), AUTHOR)
    uid = x._accept(data, "published").update_id
    restarted = exchange(tmp_path)  # the same store: held before a restart
    restarted._load_held()
    assert restarted.held_update(uid).source == "stored"
    assert restarted.decoded(uid).update_id == x.decoded(uid).update_id and len(decodes) == 1
    assert restarted.decoded(uid) is restarted.decoded(uid) and len(decodes) == 1  # kept once decoded
    x.set_context(round=9, known_bases=frozenset({BASE}))  # round 5 is out of the rounds of interest
    assert x.decoded(uid).update_id == uid and len(decodes) == 2  # dropped from memory, read from disk
