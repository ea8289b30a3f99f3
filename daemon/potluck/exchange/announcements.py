"""Update announcements (pure): "I hold update X" as a small signed DHT value.

Key ``potluck/<run>/updates/<round>``, subkey = update id (hex), value = canonical msgpack
``[domain, update_id, round, author, size, holders, announcer, timestamp]`` + Ed25519 signature by
the announcer. An announcement is only a hint of where to fetch: the bytes are checked against the
update id (a hash) and the update's own signature, so a lying announcer costs a failed fetch.
"""

from __future__ import annotations

from dataclasses import dataclass

from potluck.identity import PUBLIC_KEY_SIZE, NodeIdentity, peer_id_of
from potluck.signed import RecordError, RecordFormat

DOMAIN = "potluck/announce/v1"
MAX_HOLDERS = 8
MAX_ANNOUNCEMENT_BYTES = 2048  # far below hivemind's 15 KB DHT value hazard


class BadAnnouncement(RecordError):
    pass


FORMAT = RecordFormat(DOMAIN, fields=7, max_bytes=MAX_ANNOUNCEMENT_BYTES, max_depth=2,
                      error=BadAnnouncement, max_array_len=MAX_HOLDERS, max_str_len=64)  # fmt: skip


def updates_key(run: str, round_: int) -> str:
    return f"potluck/{run}/updates/{round_}"


@dataclass(frozen=True)
class Announcement:
    update_id: str  # hex sha256 of the update body
    round: int
    author: bytes  # the update author's public key
    size: int  # bytes of the update envelope
    holders: tuple[str, ...]  # peer ids that hold the bytes, announcer first
    announcer: bytes  # public key that signed this announcement
    timestamp: float

    def _body(self) -> bytes:
        return FORMAT.body(
            bytes.fromhex(self.update_id),
            self.round,
            self.author,
            self.size,
            list(self.holders),
            self.announcer,
            self.timestamp,
        )

    def sign(self, identity: NodeIdentity) -> bytes:
        """The announcer signs its own announcement (ValueError for any other key)."""
        return FORMAT.sign(identity, self.announcer, self._body())

    @classmethod
    def verify(cls, data: bytes) -> Announcement:
        """Parse and check a signed announcement; BadAnnouncement on anything wrong."""
        fields, body, signature = FORMAT.open(data)
        update_id, round_, author, size, holders, announcer, timestamp = fields
        ok = (
            type(update_id) is bytes
            and len(update_id) == 32
            and type(round_) is int
            and round_ >= 0
            and type(author) is bytes
            and len(author) == PUBLIC_KEY_SIZE
            and type(size) is int
            and size > 0
            and type(holders) is list
            and len(holders) > 0
            and all(type(h) is str for h in holders)
            and type(announcer) is bytes
            and len(announcer) == PUBLIC_KEY_SIZE
            and type(timestamp) is float
        )
        if not ok:
            raise BadAnnouncement("malformed", "wrong field types")
        FORMAT.check_signature(announcer, signature, body)
        if holders[0] != peer_id_of(announcer):
            raise BadAnnouncement("malformed", "the announcer must be the first holder")
        return cls(update_id.hex(), round_, author, size, tuple(holders), announcer, timestamp)
