"""Round entries and update assignment (pure): who takes part in an aggregation and who carries what.

At a round's deadline every participant freezes the set of updates it accepted for the round and
publishes a signed entry ``[domain, run, round, attempt, base, node, updates, senior, excluded]`` in
the DHT. After a short window all participants read the same entries and derive, each on its own,
the same assignment: every update goes to exactly one participant among those holding it (the one
with the smallest sha256(update id || node id)), so the all-reduce counts each update exactly once,
whoever authored it and whether or not its author is still online.

Defences (potluck.defence) ride on the same entries, so that they too are decided by what every
participant reads, not by what each one happens to know:

* ``excluded``: ``[update id, evidence id, evidence round]`` for updates of the round whose author
  this participant has banned. An update excluded by any entry is left out of the assignment
  (:func:`assign`); every participant checks the named evidence before it takes part.
* ``senior``: a bitmap over ``updates``: bit i says the author of ``updates[i]`` has served its
  probation by this participant's committed history. An update is senior when any entry holding it
  says so (:func:`senior_ids`; the rule is in potluck.defence.probation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from potluck.identity import PUBLIC_KEY_SIZE, NodeIdentity
from potluck.signed import RecordError, RecordFormat

DOMAIN = "potluck/round-entry/v2"
MAX_ENTRY_UPDATES = 256  # 256 ids * 32 B keeps an entry far below hivemind's 15 KB DHT value hazard
MAX_ENTRY_EXCLUDED = 16  # 16 * ~70 B
MAX_ENTRY_BYTES = 12 << 10


class BadEntry(RecordError):
    pass


FORMAT = RecordFormat(DOMAIN, fields=8, max_bytes=MAX_ENTRY_BYTES, max_depth=3, error=BadEntry,
                      max_array_len=MAX_ENTRY_UPDATES, max_str_len=256)  # fmt: skip


def entries_key(run_id: str, round_: int, attempt: int) -> str:
    return f"potluck/{run_id}/round/{round_}/attempt/{attempt}/entries"


@dataclass(frozen=True)
class RoundEntry:
    run: str
    round: int
    attempt: int
    base: str  # the version (hex) this participant aggregates onto
    node: bytes  # participant public key
    updates: tuple[str, ...]  # sorted ids (hex) of the round's updates it holds
    senior: bytes = b""  # bitmap over updates (potluck.defence.probation.pack_bits); b"": none
    excluded: tuple[tuple[str, str, int], ...] = ()  # (update id, evidence id, evidence round), by id

    def _body(self) -> bytes:
        return FORMAT.body(
            self.run,
            self.round,
            self.attempt,
            bytes.fromhex(self.base),
            self.node,
            [bytes.fromhex(u) for u in self.updates],
            self.senior,
            [[bytes.fromhex(u), bytes.fromhex(e), r] for u, e, r in self.excluded],
        )

    def sign(self, identity: NodeIdentity) -> bytes:
        """A participant signs only its own entry (ValueError for any other key)."""
        return FORMAT.sign(identity, self.node, self._body())

    @classmethod
    def verify(cls, data: bytes) -> RoundEntry:
        fields, body, signature = FORMAT.open(data)
        run, round_, attempt, base, node, updates, senior, excluded = fields
        ok = (
            type(run) is str
            and type(round_) is int
            and round_ >= 0
            and type(attempt) is int
            and attempt >= 0
            and type(base) is bytes
            and len(base) == 32
            and type(node) is bytes
            and len(node) == PUBLIC_KEY_SIZE
            and type(updates) is list
            and all(type(u) is bytes and len(u) == 32 for u in updates)
            and type(senior) is bytes
            and type(excluded) is list
            and len(excluded) <= MAX_ENTRY_EXCLUDED
            and all(
                type(x) is list and len(x) == 3 and type(x[0]) is bytes and len(x[0]) == 32
                and type(x[1]) is bytes and len(x[1]) == 32 and type(x[2]) is int and x[2] >= 0
                for x in excluded
            )
        )  # fmt: skip
        if not ok:
            raise BadEntry("malformed", "wrong field types")
        ids = tuple(u.hex() for u in updates)
        if list(ids) != sorted(set(ids)):
            raise BadEntry("malformed", "update ids must be sorted and unique")
        if senior and (len(senior) != (len(ids) + 7) // 8 or not senior[-1] or _bits_past(senior, len(ids))):
            raise BadEntry("malformed", "senior bitmap does not fit the updates")
        excluded_ids = [x[0] for x in excluded]
        if excluded_ids != sorted(set(excluded_ids)):
            raise BadEntry("malformed", "excluded ids must be sorted and unique")
        FORMAT.check_signature(node, signature, body)
        return cls(
            run, round_, attempt, base.hex(), node, ids, senior,
            tuple((u.hex(), e.hex(), r) for u, e, r in excluded),
        )  # fmt: skip


def _bits_past(bitmap: bytes, n: int) -> bool:
    """Whether any bit at position >= n is set (a canonical bitmap has none)."""
    return any(bitmap[i // 8] >> (i % 8) & 1 for i in range(n, len(bitmap) * 8))


def excluded_ids(entries: Iterable[RoundEntry]) -> dict[str, set[tuple[str, int]]]:
    """update id -> the (evidence id, evidence round) pairs the entries name to exclude it."""
    out: dict[str, set[tuple[str, int]]] = {}
    for entry in entries:
        for uid, evidence_id, evidence_round in entry.excluded:
            out.setdefault(uid, set()).add((evidence_id, evidence_round))
    return out


def senior_ids(entries: Iterable[RoundEntry]) -> set[str]:
    """Ids of the updates some entry marks as by an author past probation."""
    out: set[str] = set()
    for entry in entries:
        if entry.senior:
            bits = entry.senior
            out.update(uid for i, uid in enumerate(entry.updates) if bits[i // 8] >> (i % 8) & 1)
    return out


def assign(entries: Iterable[RoundEntry], min_holders: int = 1) -> dict[str, bytes]:
    """update id -> the participant (public key) that carries it into the all-reduce.

    Left out: updates that any entry excludes, and updates held by fewer than ``min_holders`` entries.
    A round's retries ask for a majority (:func:`retry_holders`): an id that only its lister "holds"
    (a phantom nobody can fetch) would otherwise stall every attempt of the round, and a majority of
    honest holders means every participant can fetch what is merged.
    """
    entries = list(entries)
    excluded = excluded_ids(entries)
    best: dict[str, tuple[bytes, bytes]] = {}
    holders: dict[str, int] = {}
    for entry in entries:
        for uid in entry.updates:
            if uid in excluded:
                continue
            holders[uid] = holders.get(uid, 0) + 1
            rank = hashlib.sha256(bytes.fromhex(uid) + entry.node).digest()
            if uid not in best or rank < best[uid][0]:
                best[uid] = (rank, entry.node)
    return {uid: node for uid, (_, node) in sorted(best.items()) if holders[uid] >= min_holders}


def retry_holders(participants: int) -> int:
    """Holders an update needs in a retry: more than half of the participants."""
    return participants // 2 + 1


def agreement_digest(entries: Iterable[RoundEntry]) -> str:
    """One hash of the entry set: participants compare it in the all-reduce's gather to be sure they
    all derived the assignment from the same entries."""
    h = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.node):
        h.update(entry._body())
    return h.hexdigest()
