"""The defence service in one process, over a shared in-memory DHT: an equivocation found by one node
becomes a ban there, evidence that any other node verifies on its own (and bans too), and exclusions
the round entries can rely on; bogus evidence is counted and bans nobody."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import msgpack
import pytest

from potluck.defence.bans import BanRegistry
from potluck.defence.evidence import DOMAIN, RECORD_DOMAIN, Equivocation, EvidenceRecord, evidence_key
from potluck.defence.service import DefenceError, DefenceService
from potluck.exchange.service import UpdateExchange
from potluck.identity import NodeIdentity
from potluck.rounds.entries import RoundEntry, assign
from potluck.store.updates import UpdateStore
from potluck.updates.codec import encode_update, parse_update
from potluck.updates.reasons import Reason, UpdateRejected
from potluck.updates.validation import UpdateValidator, ValidationContext
from potluck.wire import pack_pair
from tests.updates.builders import BASE, RUN, SHAPES, build

ATTACKER, HONEST, LIAR = (NodeIdentity.generate() for _ in range(3))


class FakeHost:
    """What the service and the exchange use of SwarmHost; every node shares one ``dht`` dict."""

    def __init__(self, dht: dict, identity: NodeIdentity):
        self.dht, self.peer_id = dht, identity.peer_id
        self.bootstrap = SimpleNamespace(connected_event=asyncio.Event())
        self.client_mode = False

    async def get(self, key):
        return {sk: SimpleNamespace(value=v) for sk, v in self.dht.get(key, {}).items()}

    async def store(self, key, subkey, value, expiration):
        self.dht.setdefault(key, {})[subkey] = value
        return True

    def call_soon(self, callback):
        callback()


class Node:
    def __init__(self, root, dht: dict, nodes: dict):
        self.identity = NodeIdentity.generate()
        self.host = FakeHost(dht, self.identity)
        context = ValidationContext(RUN, 5, SHAPES, frozenset({BASE}))
        self.bans = BanRegistry(root / "bans.json")
        validator = UpdateValidator(context, is_banned=self.bans.is_banned, max_per_author_round=3)
        self.exchange = UpdateExchange(
            self.host, self.identity, RUN, UpdateStore(root / "updates"), validator, lambda p: [],
            evidence_store=UpdateStore(root / "evidence"),
        )  # fmt: skip
        nodes[self.identity.peer_id] = self

        async def download(holder, update_id, limit):  # the GetUpdate handler of the holder
            data = nodes[holder].exchange.read_any(update_id)
            if data is None:
                raise OSError("holder does not have it")
            return data

        self.exchange.fetcher.download = download
        self.defence = DefenceService(
            host=self.host, identity=self.identity, run=RUN, bans=self.bans, exchange=self.exchange,
            peers=lambda: [SimpleNamespace(record=SimpleNamespace(peer_id=p)) for p in nodes],
        )  # fmt: skip


def update(author=ATTACKER, **overrides) -> bytes:
    return encode_update(build(author, **overrides), author)


def uid(data: bytes) -> str:
    return parse_update(data).update_id


def equivocate(node: Node) -> tuple[bytes, bytes]:
    """ATTACKER signs two different updates for round 5: ``node`` holds the first, rejects the second."""
    first, second = update(seq=1), update(seq=2, sample_count=7)
    node.exchange._accept(first, "fetched")
    with pytest.raises(UpdateRejected) as info:
        node.exchange._accept(second, "fetched")
    assert info.value.reason is Reason.EQUIVOCATION
    return first, second


@pytest.fixture
def swarm(tmp_path):
    dht, nodes = {}, {}
    return [Node(tmp_path / f"n{i}", dht, nodes) for i in range(3)], dht


def test_found_equivocation_bans_publishes_and_excludes(swarm):
    (a, _, _), dht = swarm
    first, second = equivocate(a)
    ban = a.bans.get(ATTACKER.public_key)
    assert ban is not None and (ban.reason, ban.round) == ("equivocation", 5)
    assert a.exchange.evidence_store.has(uid(second)) and a.exchange.read_any(uid(second)) == second
    assert {x[0] for x in a.defence.exclusions(5)} == {uid(first), uid(second)}
    assert all(x[1:] == (ban.evidence_id, 5) for x in a.defence.exclusions(5))
    asyncio.run(a.defence.publish_all())
    (value,) = dht[evidence_key(RUN, 5)].values()
    assert EvidenceRecord.verify(value).claim.evidence_id == ban.evidence_id
    with pytest.raises(UpdateRejected) as info:
        a.exchange._accept(update(seq=3, round=5), "fetched")
    assert info.value.reason is Reason.BANNED
    assert a.defence.status_fields()["bans"][0]["reason"] == "equivocation"


def test_every_node_verifies_the_evidence_on_its_own(swarm):
    (a, b, c), _ = swarm
    first, _ = equivocate(a)
    asyncio.run(a.defence.publish_all())
    eid = a.bans.get(ATTACKER.public_key).evidence_id

    async def verify_from_dht(node):
        for item in (await node.host.get(evidence_key(RUN, 5))).values():
            node.defence._consider(item.value, 5)
        await asyncio.gather(*node.defence._inflight.values())

    asyncio.run(verify_from_dht(b))  # fetches both updates from a, checks both signatures
    assert b.bans.get(ATTACKER.public_key).evidence_id == eid
    assert b.exchange.read_any(uid(first)) == first  # and serves them on
    # c never looked: an entry naming the exclusion makes it verify before it takes part
    entry = RoundEntry(RUN, 5, 0, BASE, b.identity.public_key, (), excluded=b.defence.exclusions(5))
    asyncio.run(c.defence.check_entries([entry], time.time() + 5))
    assert c.bans.is_banned(ATTACKER.public_key)
    honest = update(HONEST, seq=1)
    c.exchange._accept(honest, "fetched")
    held = RoundEntry(RUN, 5, 0, BASE, c.identity.public_key, tuple(sorted([uid(honest), uid(first)])))
    assert sorted(assign([entry, held])) == [uid(honest)]


def test_bogus_evidence_is_rejected_counted_and_bans_nobody(swarm):
    (a, b, _), dht = swarm
    x, y = update(seq=1), update(seq=2, round=6)  # two rounds: no equivocation
    z = update(HONEST, seq=1)
    for data in (x, y, z):
        a.exchange.evidence_store.put(uid(data), data)
    records = {
        "wrong_round": Equivocation.of(RUN, 5, ATTACKER.public_key, uid(x), uid(y)),
        "wrong_author": Equivocation.of(RUN, 5, ATTACKER.public_key, uid(x), uid(z)),
    }
    for claim in records.values():
        value = EvidenceRecord(claim, a.identity.public_key, time.time()).sign(a.identity)
        dht.setdefault(evidence_key(RUN, 5), {})[claim.evidence_id.encode()] = value
    forged = bytearray(value)
    forged[-1] ^= 1
    dht[evidence_key(RUN, 5)][b"forged"] = bytes(forged)
    twice = msgpack.packb([DOMAIN, RUN, 5, ATTACKER.public_key, bytes.fromhex(uid(x)), bytes.fromhex(uid(x))])
    body = msgpack.packb([RECORD_DOMAIN, twice, a.identity.public_key, 1.0])
    dht[evidence_key(RUN, 5)][b"twice"] = pack_pair(body, a.identity.sign(body))

    async def poll():
        for _ in range(2):  # a second look counts nothing twice
            for item in (await b.host.get(evidence_key(RUN, 5))).values():
                b.defence._consider(item.value, 5)
            await asyncio.gather(*b.defence._inflight.values())

    asyncio.run(poll())
    assert len(b.bans) == 0
    assert b.defence.rejections == {
        "wrong_round": 1, "wrong_author": 1, "bad_record_signature": 1, "same_update": 1
    }  # fmt: skip
    assert b.defence.status_fields()["evidence_rejected"]["same_update"] == 1
    # a participant that names bogus evidence in its entry stops the attempt instead of excluding
    liar = RoundEntry(
        RUN, 5, 0, BASE, LIAR.public_key, (), excluded=((uid(z), records["wrong_author"].evidence_id, 5),)
    )
    with pytest.raises(DefenceError, match="cannot back"):
        asyncio.run(b.defence.check_entries([liar], time.time() + 2))


def test_an_exclusion_must_name_the_update_s_own_author(swarm):
    (a, _, _), _ = swarm
    equivocate(a)
    honest = update(HONEST, seq=1)
    a.exchange._accept(honest, "fetched")
    eid = a.bans.get(ATTACKER.public_key).evidence_id
    liar = RoundEntry(RUN, 5, 0, BASE, LIAR.public_key, (), excluded=((uid(honest), eid, 5),))
    with pytest.raises(DefenceError, match="its author is"):
        asyncio.run(a.defence.check_entries([liar], time.time() + 2))


def test_rate_limited_and_banned_announcements_are_not_fetched(swarm):
    (a, _, _), _ = swarm
    from potluck.exchange.announcements import Announcement

    def announcement(author, data):
        return Announcement(uid(data), 5, author.public_key, len(data), ("x",), HONEST.public_key, 1.0)

    junk = [update(HONEST, seq=i, sample_count=i) for i in range(1, 5)]
    a.exchange.validator.context = a.exchange.validator.context.__class__(RUN, 5, SHAPES, frozenset())
    for data in junk[:3]:  # unknown base: rejected after the signature, counted for the author
        with pytest.raises(UpdateRejected):
            a.exchange._accept(data, "fetched")
    assert a.exchange.fetcher.skip(announcement(HONEST, junk[3]))
    assert a.exchange.fetcher.skip(announcement(HONEST, junk[3]))  # counted once
    assert a.exchange.validator.counters["rate_limited"] == 1
    assert not a.exchange.fetcher.skip(announcement(ATTACKER, update(seq=1)))
    a.bans.ban(ATTACKER.public_key, "lying_reducer", 4, "fault")
    assert a.exchange.fetcher.skip(announcement(ATTACKER, update(seq=1)))
    assert a.exchange.validator.counters["banned"] == 1
