"""Commit records: what a round produced, signed by its participants; quorum and fork choice.

Body = canonical msgpack ``["potluck/commit/v1", run_id, round, parent, version,
[[tensor name, tensor hash], ...], [update ids], [contributors], [participants], total_weight]``,
hashes and node ids as 32-byte bins, every list sorted and unique. Every participant computes the
same body from the same round (no timestamps, no per-node fields), so their signatures add up.

A run whose probe rule keeps a per-author record (potluck.merge.record) commits
``["potluck/commit/v2", <the nine fields>, [[author, record], ...]]``: each author's probe record after
the round (32-byte bin, float64), sorted by author. Every other commit, and one whose record is empty,
is v1, so the ids of commits of runs without a record are what they were.

``commit_id = sha256(body)`` hex; a signature is Ed25519 over those 32 bytes, so a signature can be
checked against a commit id before the body arrives. Bytes from peers are decoded with bounded
msgpack and :class:`CommitError` is the only exception they raise.

Fork choice (:class:`QuorumTracker`): a commit counts as committed when at least ``quorum``
distinct participants *listed in the commit* signed it. If a network split healed and two different
commits for the same round both reached quorum, the one with more valid participant signatures wins;
on a tie, the lowest commit id (hex order). Both rules depend only on the signatures seen, so nodes
that have seen the same signatures choose the same commit.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from potluck.hashing import version_hash_of
from potluck.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, NodeIdentity, verify
from potluck.signed import RecordError, RecordFormat

__all__ = [
    "DOMAIN",
    "Commit",
    "CommitError",
    "CommitSignature",
    "QuorumTracker",
    "commit_id",
    "sign_commit",
    "verify_signature",
]

DOMAIN = "potluck/commit/v1"
DOMAIN_V2 = "potluck/commit/v2"  # v1's fields and the probe record after the round
SIGNATURE_DOMAIN = "potluck/commit-signature/v1"
MAX_COMMIT_BYTES = 16 << 20
MAX_TENSORS = 1 << 16
MAX_UPDATES = 1 << 16
MAX_NODES = 1 << 14
MAX_RUN_LEN = 256
MAX_NAME_LEN = 512
_MAX_UINT = (1 << 63) - 1
_MAX_PENDING = 4096


class CommitError(RecordError):
    """A commit or commit signature that is malformed or inconsistent."""


BODY = RecordFormat(DOMAIN, fields=9, max_bytes=MAX_COMMIT_BYTES, max_depth=3, error=CommitError,
                    max_str_len=max(MAX_NAME_LEN, MAX_RUN_LEN, len(DOMAIN)), max_bin_len=32,
                    max_array_len=max(MAX_TENSORS, MAX_UPDATES, MAX_NODES), max_map_len=0)  # fmt: skip
BODY_V2 = RecordFormat(DOMAIN_V2, fields=10, max_bytes=MAX_COMMIT_BYTES, max_depth=3, error=CommitError,
                       max_str_len=max(MAX_NAME_LEN, MAX_RUN_LEN, len(DOMAIN_V2)), max_bin_len=32,
                       max_array_len=max(MAX_TENSORS, MAX_UPDATES, MAX_NODES), max_map_len=0)  # fmt: skip
MAX_RECORD = 1e12  # a record's bound (sums of scores over their round's median: far below)
SIGNATURE = RecordFormat(SIGNATURE_DOMAIN, fields=3, max_bytes=256, max_depth=1, error=CommitError,
                         max_str_len=len(SIGNATURE_DOMAIN), max_bin_len=64, max_array_len=4,
                         max_map_len=0)  # fmt: skip


def _hex32(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise CommitError(f"{what} must be 64 lowercase hex digits, got {str(value)[:80]!r}")
    return value


def _sorted_unique(values: Iterable[str], what: str) -> tuple[str, ...]:
    out = tuple(sorted(_hex32(v, what) for v in values))
    if any(a == b for a, b in itertools.pairwise(out)):
        raise CommitError(f"duplicate {what}")
    return out


@dataclass(frozen=True)
class Commit:
    """The record of one round. Lists are sorted on construction; duplicates are an error."""

    run_id: str
    round: int
    parent: str  # version hash of V_r
    version: str  # version hash of V_{r+1}
    tensor_hashes: Mapping[str, str]  # name -> tensor hash of V_{r+1}
    updates: tuple[str, ...] = ()  # ids of the merged updates
    contributors: tuple[str, ...] = ()  # node ids of their authors
    participants: tuple[str, ...] = ()  # node ids of the group that aggregated (and may sign)
    total_weight: int = 0
    record: tuple[tuple[str, float], ...] = ()  # (author node id, probe record after the round)

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or not 0 < len(self.run_id) <= MAX_RUN_LEN:
            raise CommitError("run_id must be a non-empty str")
        if type(self.round) is not int or not 0 <= self.round <= _MAX_UINT:
            raise CommitError(f"round must be a non-negative int, got {self.round!r}")
        if type(self.total_weight) is not int or not 0 <= self.total_weight <= _MAX_UINT:
            raise CommitError(f"total_weight must be a non-negative int, got {self.total_weight!r}")
        _hex32(self.parent, "parent")
        _hex32(self.version, "version")
        if not isinstance(self.tensor_hashes, Mapping):
            raise CommitError("tensor_hashes must be a mapping")
        hashes = {}
        for name in sorted(self.tensor_hashes):
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LEN:
                raise CommitError("tensor names must be non-empty str")
            hashes[name] = _hex32(self.tensor_hashes[name], f"tensor hash of {name}")
        if version_hash_of(hashes) != self.version:
            raise CommitError("version is not the hash of tensor_hashes")
        object.__setattr__(self, "tensor_hashes", hashes)
        for name in ("updates", "contributors", "participants"):
            object.__setattr__(self, name, _sorted_unique(getattr(self, name), name[:-1]))
        if not self.participants:
            raise CommitError("a commit has at least one participant")
        record = tuple(sorted((tuple(pair) for pair in self.record), key=lambda pair: pair[0]))
        _sorted_unique((author for author, _ in record), "recorded author")
        for author, value in record:
            if type(value) is not float or not abs(value) <= MAX_RECORD:
                raise CommitError(f"the record of {author[:16]} must be a float within 1e12, got {value!r}")
        object.__setattr__(self, "record", record)

    def __hash__(self) -> int:
        return hash(self.body())

    def body(self) -> bytes:
        """The canonical encoding (what :func:`commit_id` hashes): v2 only where there is a record."""
        fields = (
            self.run_id, self.round, bytes.fromhex(self.parent), bytes.fromhex(self.version),
            [[name, bytes.fromhex(h)] for name, h in self.tensor_hashes.items()],
            [bytes.fromhex(u) for u in self.updates], [bytes.fromhex(c) for c in self.contributors],
            [bytes.fromhex(p) for p in self.participants], self.total_weight,
        )  # fmt: skip
        if not self.record:
            return BODY.body(*fields)
        return BODY_V2.body(*fields, [[bytes.fromhex(a), v] for a, v in self.record])

    @property
    def id(self) -> str:
        return commit_id(self)

    def to_bytes(self) -> bytes:
        return self.body()

    @classmethod
    def from_bytes(cls, data: bytes) -> Commit:
        """Decode a commit from a peer; :class:`CommitError` (and nothing else) on bad input."""
        try:
            return cls._decode(data)
        except CommitError:
            raise
        except Exception as e:  # a bug must not become a crash on peer input
            raise CommitError(f"bad commit: unexpected {type(e).__name__}: {e}") from None

    @classmethod
    def _decode(cls, data: bytes) -> Commit:
        try:
            fields, recorded = BODY.fields_of(data), []
        except CommitError:
            *fields, recorded = BODY_V2.fields_of(data)  # its error, if neither: the newer format's
            if type(recorded) is not list or not recorded or not all(
                type(p) is list and len(p) == 2 and type(p[0]) is bytes and len(p[0]) == 32
                and type(p[1]) is float for p in recorded
            ):  # fmt: skip
                raise CommitError("record must be a non-empty [[32-byte author, float], ...]") from None
        run_id, round_, parent, version, tensors, updates, contributors, participants, weight = fields

        def hashes(items: Any, what: str, limit: int) -> list[str]:
            if type(items) is not list or len(items) > limit:
                raise CommitError(f"{what} must be a list of at most {limit}")
            if not all(type(x) is bytes and len(x) == 32 for x in items):
                raise CommitError(f"{what} must be 32-byte bins")
            return [x.hex() for x in items]

        if type(run_id) is not str:
            raise CommitError("run_id must be a str")
        if type(tensors) is not list or not all(
            type(t) is list and len(t) == 2 and type(t[0]) is str for t in tensors
        ):
            raise CommitError("tensor_hashes must be [[name, hash], ...]")
        names = [t[0] for t in tensors]
        tensor_hashes = dict(
            zip(names, hashes([t[1] for t in tensors], "tensor hashes", MAX_TENSORS), strict=True)
        )
        if len(tensor_hashes) != len(names):
            raise CommitError("duplicate tensor names")
        for what, x in (("parent", parent), ("version", version)):
            if type(x) is not bytes or len(x) != 32:
                raise CommitError(f"{what} must be a 32-byte bin")
        commit = cls(
            run_id, round_, parent.hex(), version.hex(), tensor_hashes,
            tuple(hashes(updates, "updates", MAX_UPDATES)),
            tuple(hashes(contributors, "contributors", MAX_NODES)),
            tuple(hashes(participants, "participants", MAX_NODES)), weight,
            tuple((author.hex(), value) for author, value in recorded),
        )  # fmt: skip
        if commit.body() != data:
            raise CommitError("commit is not canonical (unsorted lists or non-minimal encoding)")
        return commit


def commit_id(commit: Commit) -> str:
    """sha256 of the commit body, hex: what participants sign."""
    return hashlib.sha256(commit.body()).hexdigest()


@dataclass(frozen=True)
class CommitSignature:
    """A participant's Ed25519 signature over the 32 bytes of a commit id."""

    node_id: str  # hex public key
    signature: bytes

    def verify(self, commit_id_hex: str) -> bool:
        try:
            key = bytes.fromhex(self.node_id)
            digest = bytes.fromhex(commit_id_hex)
        except (ValueError, TypeError):
            return False
        return len(digest) == 32 and verify(key, self.signature, digest)

    def to_bytes(self, commit_id_hex: str) -> bytes:
        """``[domain, commit id, node id, signature]``: a signature that names what it signs."""
        return SIGNATURE.body(bytes.fromhex(commit_id_hex), bytes.fromhex(self.node_id), self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[str, CommitSignature]:
        """Decode ``(commit id, signature)``; :class:`CommitError` on bad input. The signature is not
        verified here (:meth:`verify`, or :class:`QuorumTracker` does it)."""
        cid, node, sig = SIGNATURE.fields_of(data)  # [domain, commit id, node id, signature]
        if type(cid) is not bytes or len(cid) != 32:
            raise CommitError("commit id must be a 32-byte bin")
        if type(node) is not bytes or len(node) != PUBLIC_KEY_SIZE:
            raise CommitError("node id must be a 32-byte bin")
        if type(sig) is not bytes or len(sig) != SIGNATURE_SIZE:
            raise CommitError("signature must be a 64-byte bin")
        return cid.hex(), cls(node.hex(), sig)


def sign_commit(commit: Commit, identity: NodeIdentity) -> CommitSignature:
    return CommitSignature(identity.node_id, identity.sign(bytes.fromhex(commit_id(commit))))


def verify_signature(commit: Commit, signature: CommitSignature) -> bool:
    """True when ``signature`` is a valid signature of ``commit`` (membership is not checked here)."""
    return signature.verify(commit_id(commit))


@dataclass
class _Candidate:
    commit: Commit | None = None
    signatures: dict[str, CommitSignature] = field(default_factory=dict)  # node id -> signature


class QuorumTracker:
    """Signatures collected for one (run, round); which commit, if any, is committed.

    Feed it commits (:meth:`add_commit`) and signatures (:meth:`add_signature`, or :meth:`add` for
    both) in any order. Invalid signatures are dropped; each signer counts once per commit; a
    signature counts only if its signer is among the commit's participants (checked once the body
    is known). Signatures for commit ids whose body is unknown wait, up to a bound.
    """

    def __init__(self, run_id: str, round: int, quorum: int) -> None:
        if quorum < 1:
            raise ValueError("quorum must be >= 1")
        self.run_id = run_id
        self.round = round
        self.quorum = quorum
        self._candidates: dict[str, _Candidate] = {}
        self._pending = 0

    def add_commit(self, commit: Commit) -> bool:
        """Register a commit body; False (ignored) when it is for another run or round."""
        if commit.run_id != self.run_id or commit.round != self.round:
            return False
        cid = commit_id(commit)
        candidate = self._candidates.setdefault(cid, _Candidate())
        if candidate.commit is None:
            candidate.commit = commit
            self._pending -= len(candidate.signatures)
            allowed = set(commit.participants)
            candidate.signatures = {n: s for n, s in candidate.signatures.items() if n in allowed}
        return True

    def add_signature(self, cid: str, signature: CommitSignature) -> bool:
        """Record a signature of commit ``cid``; True when it is valid and new."""
        if not isinstance(signature, CommitSignature) or not signature.verify(cid):
            return False
        candidate = self._candidates.get(cid)
        if (candidate is None or candidate.commit is None) and self._pending >= _MAX_PENDING:
            return False  # bounded memory for signatures of commits nobody showed us
        if candidate is None:
            candidate = self._candidates[cid] = _Candidate()
        if signature.node_id in candidate.signatures:
            return False
        if candidate.commit is not None:
            if signature.node_id not in candidate.commit.participants:
                return False
        else:
            self._pending += 1
        candidate.signatures[signature.node_id] = signature
        return True

    def add(self, commit: Commit, signature: CommitSignature) -> bool:
        """:meth:`add_commit` then :meth:`add_signature`; True when the signature was counted."""
        return self.add_commit(commit) and self.add_signature(commit_id(commit), signature)

    def count(self, cid: str) -> int:
        """Valid participant signatures on ``cid`` (0 while its body is unknown)."""
        candidate = self._candidates.get(cid)
        return len(candidate.signatures) if candidate and candidate.commit is not None else 0

    def signatures(self, cid: str) -> list[CommitSignature]:
        candidate = self._candidates.get(cid)
        if candidate is None or candidate.commit is None:
            return []
        return [candidate.signatures[n] for n in sorted(candidate.signatures)]

    def committed(self) -> list[Commit]:
        """Every commit with at least ``quorum`` signatures, the fork-choice winner first."""
        ranked = [
            (-len(c.signatures), cid, c.commit)
            for cid, c in self._candidates.items()
            if c.commit is not None and len(c.signatures) >= self.quorum
        ]
        return [commit for _, _, commit in sorted(ranked, key=lambda x: (x[0], x[1]))]

    def winner(self) -> Commit | None:
        """The committed commit of this round (most signatures, then lowest commit id), or None."""
        committed = self.committed()
        return committed[0] if committed else None

    def equivocators(self) -> list[str]:
        """Node ids that signed more than one commit of this round (a node signs one per round)."""
        seen: dict[str, int] = {}
        for c in self._candidates.values():
            if c.commit is not None:
                for node in c.signatures:
                    seen[node] = seen.get(node, 0) + 1
        return sorted(n for n, k in seen.items() if k > 1)
