"""Sliced aggregation (pure): coordinate-wise strategies run inside the averaging, one slice per reducer,
and every participant audits the others' slices.

With a coordinate strategy (median, trimmed mean, TIES, ...) the round's merged delta is split into n
contiguous, block-aligned slices, one per participant (sorted by public key). Every participant holds
every update of the round (they are small, sparse and signed), computes the strategy on its own
slice only, and publishes a signed :class:`SliceHeader` whose Merkle root commits to its values,
block by block (:data:`BLOCK` coordinates per leaf). The others fetch the values, check them against
the root and the signature, and **audit** them: each recomputes a random sample of coordinates of
every slice from the signed updates and compares the bits. A mismatch is a :class:`ReducerFault`: the
reducer's signed header, the block holding the wrong coordinate and its Merkle proof. Anyone who
holds the round's updates can check it alone (:meth:`ReducerFault.verify`) and learn, with the
reducer's own signature as proof, that it lied; the fault stays under 14 KB, so it travels in the DHT.

So the robust merge costs each participant 1/n of the strategy's compute plus the audit sample, and the
result stays bit-identical everywhere (every participant assembles the same signed slices).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from potluck.identity import PUBLIC_KEY_SIZE, NodeIdentity
from potluck.signed import RecordError, RecordFormat
from potluck.wire import WireError, pack_pair, unpack_pair

__all__ = [
    "BLOCK",
    "BadSlice",
    "ReducerFault",
    "SliceHeader",
    "SliceResult",
    "audit",
    "merkle_levels",
    "merkle_proof",
    "merkle_root",
    "proof_of",
    "slice_bounds",
    "verify_merkle",
]

DOMAIN = "potluck/slice/v1"
FAULT_DOMAIN = "potluck/reducer-fault/v1"
BLOCK = 256  # coordinates per Merkle leaf: a fault carries one block (2 KiB of float64)
MAX_UPDATES = 256  # as many as a round entry names
MAX_HEADER_BYTES = 10 << 10
MAX_FAULT_BYTES = 14 << 10  # below hivemind's DHT value hazard (../shared/HIVEMIND.md)
MAX_PROOF = 48

Recompute = Callable[[np.ndarray], np.ndarray]  # sorted flat columns -> float64 merged values there


class BadSlice(RecordError):
    """A slice result or a fault that does not check out."""


HEADER = RecordFormat(DOMAIN, fields=10, max_bytes=MAX_HEADER_BYTES, max_depth=2, error=BadSlice,
                      max_array_len=MAX_UPDATES, max_str_len=256)  # fmt: skip
FAULT = RecordFormat(FAULT_DOMAIN, fields=5, max_bytes=MAX_FAULT_BYTES, max_depth=2, error=BadSlice,
                     max_array_len=MAX_PROOF, max_str_len=64)  # fmt: skip


def slice_bounds(length: int, n: int) -> list[tuple[int, int]]:
    """Reducer i's coordinates ``[lo, hi)``: contiguous, block-aligned, as even as blocks allow."""
    if n < 1 or length < 0:
        raise ValueError(f"bad split of {length} coordinates among {n}")
    blocks = -(-length // BLOCK)
    cuts = [min(length, (i * blocks // n) * BLOCK) for i in range(n + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(n)]


# ---- Merkle tree over the blocks of a slice ---------------------------------------------------------


def _leaf(block: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + block).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _leaves(values: np.ndarray) -> list[bytes]:
    data = np.ascontiguousarray(values, dtype="<f8").tobytes()
    step = BLOCK * 8
    return [_leaf(data[i : i + step]) for i in range(0, len(data), step)] or [_leaf(b"")]


def merkle_levels(leaves: list[bytes], node: Callable[[bytes, bytes], bytes] = _node) -> list[list[bytes]]:
    """Every level of the tree over ``leaves`` (hashes), the leaves first and the root last; an odd node is
    paired with itself. ``node``: the inner hash (rounds/dense.py's tree uses BLAKE3)."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        level = levels[-1]
        up = [
            node(level[i], level[i + 1] if i + 1 < len(level) else level[i]) for i in range(0, len(level), 2)
        ]
        levels.append(up)
    return levels


def proof_of(levels: list[list[bytes]], leaf: int) -> list[bytes]:
    """The sibling hashes from ``leaf`` up to the root of :func:`merkle_levels`' tree."""
    proof, index = [], leaf
    for level in levels[:-1]:
        sibling = index ^ 1
        proof.append(level[sibling] if sibling < len(level) else level[index])
        index //= 2
    return proof


def merkle_root(values: np.ndarray) -> bytes:
    """Root over the float64 little-endian bytes of ``values``, :data:`BLOCK` values per leaf (an odd node
    is paired with itself; leaves and inner nodes are domain-separated)."""
    return merkle_levels(_leaves(values))[-1][0]


def merkle_proof(values: np.ndarray, block: int) -> list[bytes]:
    """The sibling hashes from leaf ``block`` up to the root."""
    return proof_of(merkle_levels(_leaves(values)), block)


def verify_merkle(
    root: bytes, block: int, block_bytes: bytes, proof: Sequence[bytes],
    leaf: Callable[[bytes], bytes] = _leaf, node: Callable[[bytes, bytes], bytes] = _node,
) -> bool:  # fmt: skip
    h, index = leaf(block_bytes), block
    for sibling in proof:
        h = node(h, sibling) if index % 2 == 0 else node(sibling, h)
        index //= 2
    return index == 0 and h == root


# ---- the signed statement of a reducer ---------------------------------------------------------------


@dataclass(frozen=True)
class SliceHeader:
    """ "I, ``reducer``, merged coordinates [lo, hi) of this attempt from exactly these updates, and
    these are the values" (the Merkle ``root`` over them)."""

    run: str
    round: int
    attempt: int
    parent: str  # the version (hex) the round merges onto
    digest: str  # agreement_digest of the attempt's entries (hex)
    reducer: bytes  # public key
    lo: int
    hi: int
    updates: tuple[str, ...]  # sorted ids (hex) of every update merged
    root: bytes

    def body(self) -> bytes:
        return HEADER.body(
            self.run, self.round, self.attempt, bytes.fromhex(self.parent), bytes.fromhex(self.digest),
            self.reducer, self.lo, self.hi, [bytes.fromhex(u) for u in self.updates], self.root,
        )  # fmt: skip

    def sign(self, identity: NodeIdentity) -> bytes:
        """A reducer signs only its own slice (ValueError for any other key)."""
        return HEADER.sign(identity, self.reducer, self.body())

    @classmethod
    def verify(cls, data: bytes) -> SliceHeader:
        fields, body, signature = HEADER.open(data)
        run, round_, attempt, parent, digest, reducer, lo, hi, updates, root = fields
        ok = (
            type(run) is str
            and all(type(x) is int and x >= 0 for x in (round_, attempt, lo, hi))
            and lo <= hi
            and all(type(x) is bytes and len(x) == 32 for x in (parent, digest, root))
            and type(reducer) is bytes
            and len(reducer) == PUBLIC_KEY_SIZE
            and type(updates) is list
            and all(type(u) is bytes and len(u) == 32 for u in updates)
        )
        if not ok:
            raise BadSlice("malformed", "wrong field types")
        ids = tuple(u.hex() for u in updates)
        if list(ids) != sorted(set(ids)):
            raise BadSlice("malformed", "update ids must be sorted and unique")
        HEADER.check_signature(reducer, signature, body)
        return cls(run, round_, attempt, parent.hex(), digest.hex(), reducer, lo, hi, ids, root)


@dataclass(frozen=True)
class SliceResult:
    """A reducer's signed header and its values, as served to the other participants."""

    signed: bytes  # SliceHeader.sign(...)
    values: np.ndarray  # float64, hi - lo

    @classmethod
    def make(cls, header: SliceHeader, identity: NodeIdentity, values: np.ndarray) -> SliceResult:
        return cls(header.sign(identity), np.ascontiguousarray(values, dtype=np.float64))

    def to_bytes(self) -> bytes:
        return pack_pair(self.signed, self.values.astype("<f8", copy=False).tobytes())

    @classmethod
    def from_bytes(cls, data: bytes, max_values: int) -> tuple[SliceHeader, SliceResult]:
        """Parse and check (signature, size, Merkle root) a result received from the network."""
        try:
            signed, raw = unpack_pair(data, MAX_HEADER_BYTES + 8 * max_values + 64)
        except WireError as e:
            raise BadSlice("malformed", f"not a slice result: {e}") from None
        header = SliceHeader.verify(signed)
        if header.hi - header.lo > max_values:
            raise BadSlice(f"{header.hi - header.lo} coordinates > {max_values}")
        if len(raw) != 8 * (header.hi - header.lo):
            raise BadSlice(f"{len(raw)} value bytes for {header.hi - header.lo} coordinates")
        values = np.frombuffer(raw, dtype="<f8").astype(np.float64)
        if merkle_root(values) != header.root:
            raise BadSlice("values do not match the signed root")
        return header, cls(signed, values)


# ---- audit and evidence ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReducerFault:
    """Proof that a reducer signed a wrong value: its signed header, one block of the values it signed
    (with the Merkle proof tying the block to the header's root) and a coordinate in that block."""

    signed: bytes
    block: int
    block_bytes: bytes
    proof: tuple[bytes, ...]
    column: int  # flat coordinate where the signed value is not the strategy's

    def to_bytes(self) -> bytes:
        return FAULT.body(self.signed, self.block, self.block_bytes, list(self.proof), self.column)

    @property
    def id(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReducerFault:
        signed, block, block_bytes, proof, column = FAULT.fields_of(data)
        ok = (
            type(signed) is bytes
            and type(block) is int
            and block >= 0
            and type(block_bytes) is bytes
            and len(block_bytes) % 8 == 0
            and len(block_bytes) <= 8 * BLOCK
            and type(proof) is list
            and all(type(p) is bytes and len(p) == 32 for p in proof)
            and type(column) is int
        )
        if not ok:
            raise BadSlice("malformed", "wrong reducer fault fields")
        return cls(signed, block, block_bytes, tuple(proof), column)

    def header(self) -> SliceHeader:
        """The accused reducer's signed statement, after checking that the block belongs to it."""
        header = SliceHeader.verify(self.signed)
        start = header.lo + self.block * BLOCK
        count = len(self.block_bytes) // 8
        if not (header.lo <= start < header.hi and start + count == min(start + BLOCK, header.hi)):
            raise BadSlice("the block is not one of the slice's blocks")
        if not start <= self.column < start + count:
            raise BadSlice("the column is not in the block")
        if not verify_merkle(header.root, self.block, self.block_bytes, self.proof):
            raise BadSlice("the block is not under the signed root")
        return header

    def verify(self, recompute: Recompute) -> SliceHeader:
        """The header of the reducer this fault convicts; :class:`BadSlice` unless the signed value at
        ``column`` differs (in its bits) from ``recompute`` (the strategy over the header's updates)."""
        header = self.header()
        start = header.lo + self.block * BLOCK
        claimed = np.frombuffer(self.block_bytes, dtype="<f8")[self.column - start]
        expected = np.asarray(recompute(np.array([self.column], dtype=np.int64)), dtype=np.float64)[0]
        if _bits(np.float64(claimed)) == _bits(expected):
            raise BadSlice("the signed value is right: no fault")
        return header


def _bits(x: np.floating) -> int:
    return int(np.float64(x).view(np.uint64))


def audit(
    header: SliceHeader, result: SliceResult, recompute: Recompute, samples: int
) -> ReducerFault | None:
    """Recompute ``samples`` coordinates of a slice, drawn with this node's own randomness (a reducer
    cannot guess which), and return a fault at the first one whose bits differ, else None.

    A lie covering a fraction q of a slice escapes one auditor with probability (1 - q)**samples, and
    every other participant audits independently."""
    width = header.hi - header.lo
    if width == 0:
        return None
    k = min(samples, width)
    rng = np.random.default_rng(secrets.randbits(128))
    offsets = np.sort(rng.choice(width, size=k, replace=False)) if k < width else np.arange(width)
    columns = (header.lo + offsets).astype(np.int64)
    expected = np.asarray(recompute(columns), dtype=np.float64)
    claimed = result.values[offsets]
    wrong = np.flatnonzero(expected.view(np.uint64) != claimed.view(np.uint64))
    if wrong.size == 0:
        return None
    offset = int(offsets[wrong[0]])
    block = offset // BLOCK
    block_values = result.values[block * BLOCK : (block + 1) * BLOCK]
    return ReducerFault(
        signed=result.signed,
        block=block,
        block_bytes=block_values.astype("<f8").tobytes(),
        proof=tuple(merkle_proof(result.values, block)),
        column=header.lo + offset,
    )
