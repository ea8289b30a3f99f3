import msgpack
import pytest

from potluck.exchange.announcements import MAX_HOLDERS, Announcement, BadAnnouncement
from potluck.identity import NodeIdentity


def make(identity: NodeIdentity, **overrides) -> Announcement:
    fields = dict(
        update_id="ab" * 32,
        round=3,
        author=NodeIdentity.generate().public_key,
        size=1234,
        holders=(identity.peer_id, "12D3KooWother"),
        announcer=identity.public_key,
        timestamp=1.5e9,
    )
    return Announcement(**{**fields, **overrides})


def test_round_trip():
    me = NodeIdentity.generate()
    announcement = make(me)
    assert Announcement.verify(announcement.sign(me)) == announcement


def test_only_the_announcer_signs():
    me, other = NodeIdentity.generate(), NodeIdentity.generate()
    with pytest.raises(ValueError):
        make(me).sign(other)


def test_forgeries_are_refused():
    me, mallory = NodeIdentity.generate(), NodeIdentity.generate()
    signed = make(me).sign(me)
    body, signature = msgpack.unpackb(signed)
    tampered = msgpack.packb([body.replace(b"\x04\xd2", b"\x04\xd3"), signature])  # size 1234 -> 1235
    with pytest.raises(BadAnnouncement, match="signature"):
        Announcement.verify(tampered)
    # an announcer naming someone else as the first holder
    with pytest.raises(BadAnnouncement, match="first holder"):
        Announcement.verify(make(mallory, holders=(me.peer_id,)).sign(mallory))
    too_many = tuple(f"12D3KooW{i}" for i in range(MAX_HOLDERS + 1))
    with pytest.raises(BadAnnouncement):
        Announcement.verify(make(me, holders=(me.peer_id, *too_many)).sign(me))


@pytest.mark.parametrize(
    "data", [b"", b"\xc1", msgpack.packb([1, 2]), b"\x91" * 5000, msgpack.packb([b"x" * 5000, b""])]
)
def test_garbage_is_refused_not_raised(data):
    with pytest.raises(BadAnnouncement):
        Announcement.verify(data)
