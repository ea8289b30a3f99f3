"""A peer record pushed to a node: checked as the DHT checks it (forged, oversized, another run's or
replayed records are refused and counted by reason), added to the view at once, kept across a DHT read
that lacks it, and answered with our own record (pure code: a real bulletin, a fake host)."""

import asyncio
import time

import msgpack
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils import ValueWithExpiration

from potluck.identity import NodeIdentity
from potluck.swarm.bulletin import Bulletin
from potluck.swarm.membership import LocalState, Membership
from potluck.swarm.records import PeerRecord, peers_key, subkey_for
from potluck.swarm.validator import PeerRecordValidator, RejectionCounters
from potluck.v1 import exchange_pb2

RUN = "ab" * 32


class FakeHost:
    def __init__(self, identity: NodeIdentity):
        self.peer_id = identity.peer_id
        self.dht: dict = {}

    async def get(self, key):
        return self.dht


class RecordingBulletin(Bulletin):
    def __init__(self, host):
        super().__init__(host, RUN, list)
        self.sent: list[tuple[str, set[str]]] = []

    def post(self, key, subkey, value, expiration, *, to=None, store=True):
        self.sent.append((key, set(to)))


def signed(identity: NodeIdentity, sequence: int, *, run: str = RUN, value: bytes | None = None):
    """(subkey, value, expiration) of ``identity``'s record as its DHT signs it."""
    now = time.time()
    addrs = ("/ip4/127.0.0.1/tcp/1",)
    body = PeerRecord(identity.peer_id, addrs, "keeper", "t", 0, "", now, sequence).encode()
    key = DHTID.generate(source=peers_key(run)).to_bytes()
    record = DHTRecord(key, msgpack.packb(subkey_for(identity.public_key)), msgpack.packb(body), now + 30)
    own = PeerRecordValidator(identity, run, RejectionCounters())
    return record.subkey, value if value is not None else own.sign_value(record), record.expiration_time


def make_node():
    me = NodeIdentity.generate()
    counters = RejectionCounters()
    bulletin = RecordingBulletin(FakeHost(me))
    push = (bulletin, PeerRecordValidator(me, RUN, counters))
    membership = Membership(FakeHost(me), me, RUN, LocalState("keeper", "t"), ttl_s=30.0, push=push)
    return membership, bulletin, counters


def receive(bulletin: Bulletin, subkey: bytes, value: bytes, expiration: float) -> None:
    message = exchange_pb2.Post(key=peers_key(RUN), subkey=subkey, value=value, expiration=expiration)
    asyncio.run(bulletin._receive(message, None))


def test_a_pushed_record_is_checked_then_viewed_and_answered():
    node, bulletin, counters = make_node()
    node._sign(b"our record", time.time() + 30)  # as after the first publish
    bob, mallory = NodeIdentity.generate(), NodeIdentity.generate()
    receive(bulletin, *signed(bob, 5))
    assert [(p.record.peer_id, p.record.sequence) for p in node.peers()] == [(bob.peer_id, 5)]
    assert bulletin.sent == [(peers_key(RUN), {bob.peer_id})]  # bob learns of us in the same round trip
    assert bulletin.received == 1 and bulletin.dropped == 0

    subkey, _, expiration = signed(bob, 9)
    forged = signed(mallory, 9)[1]  # mallory's signature over a record naming bob
    receive(bulletin, subkey, forged, expiration)
    receive(bulletin, *signed(bob, 9, value=b"\x00" * 5000))
    receive(bulletin, *signed(bob, 9, run="cd" * 32))  # signed for another run's key
    receive(bulletin, *signed(bob, 7))
    receive(bulletin, *signed(bob, 6))  # older than the 7 just taken: a replay
    assert [p.record.sequence for p in node.peers()] == [7]
    assert bulletin.dropped == 4 and len(bulletin.sent) == 1  # bob was told once
    counts = counters.snapshot()
    assert (counts["bad_signature"], counts["oversized"], counts["replayed"]) == (2, 1, 1)


def test_a_dht_read_keeps_a_pushed_record_until_the_dht_has_one_as_new():
    node, bulletin, _ = make_node()
    bob = NodeIdentity.generate()
    receive(bulletin, *signed(bob, 5))
    asyncio.run(node.refresh_view())  # the DHT has no copy yet: the pushed one stays
    assert [p.record.sequence for p in node.peers()] == [5]
    subkey, value, expiration = signed(bob, 8)
    stripped = msgpack.unpackb(PeerRecordValidator(bob, RUN, RejectionCounters()).strip_value(
        DHTRecord(b"", subkey, value, expiration)))  # fmt: skip
    node._host.dht = {msgpack.unpackb(subkey): ValueWithExpiration(stripped, expiration)}
    asyncio.run(node.refresh_view())
    assert [p.record.sequence for p in node.peers()] == [8] and not node._pushed


def test_pushed_records_are_bounded(monkeypatch):
    from potluck.swarm import membership

    monkeypatch.setattr(membership, "MAX_PUSHED", 3)
    node, bulletin, _ = make_node()
    for _ in range(5):
        receive(bulletin, *signed(NodeIdentity.generate(), 1))
    assert len(node.peers()) == 3 and bulletin.dropped == 2
