"""Probation (pure): a new author's updates weigh 0 until it has contributed to N committed rounds.

N is the manifest's ``probation_rounds`` (0 = off). The weight goes into the merge every participant
must agree on, so the rule is a function of agreed data only, never of when a node saw what:

1. **Seniority from committed history.** An author is *senior* for round r when at least N
   committed rounds before r list it among their contributors (``Commit.contributors``, signed by
   the round's quorum). A node counts this in its own history (:func:`contributions`).
2. **Agreement through the round's entries.** A node whose history is incomplete (it synced late)
   can only under-count, never over-count. So each participant marks, in its signed round entry,
   which of the updates it holds have a senior author by its own history (``RoundEntry.senior``),
   and an update is senior when any entry of the attempt marks it (``entries.senior_ids``). Every
   participant reads the same entries, so every participant computes the same weights; a node with
   a full history is enough to vouch for a veteran, and a late joiner cannot put anyone on probation.
3. **Weight.** A senior update weighs ``manifest.update_weight(sample_count)``; one on probation
   weighs 0: it is still listed in the commit (its author is a contributor, and that round counts
   towards its N) but it contributes nothing to the merged delta.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from potluck.manifest import Manifest

__all__ = ["contributions", "is_senior", "pack_bits", "rounds_left", "unpack_bits", "update_weight"]


def contributions(log: Iterable[Mapping[str, Any]], before: int | None = None) -> Counter[str]:
    """node id -> number of committed rounds (< ``before``) that list it among their contributors.

    ``log`` is ``History.log()``: one row per committed round with a ``contributors`` list.
    """
    counts: Counter[str] = Counter()
    for row in log:
        if before is None or row["round"] < before:
            counts.update(set(row["contributors"]))
    return counts


def is_senior(rounds_contributed: int, probation_rounds: int) -> bool:
    return rounds_contributed >= probation_rounds


def rounds_left(rounds_contributed: int, probation_rounds: int) -> int:
    """Committed rounds an author still has to contribute to before its updates count."""
    return max(0, probation_rounds - rounds_contributed)


def update_weight(manifest: Manifest, sample_count: int, senior: bool) -> int:
    """The merge weight of an update: the manifest's weight, or 0 while its author is on probation."""
    if manifest.probation_rounds > 0 and not senior:
        return 0
    return manifest.update_weight(sample_count)


def pack_bits(bits: Iterable[bool]) -> bytes:
    """Booleans as a little-endian bitmap (bit i of byte i // 8); b"" when none is set."""
    bits = list(bits)
    if not any(bits):
        return b""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def unpack_bits(data: bytes, n: int) -> list[bool]:
    """The first ``n`` booleans of :func:`pack_bits` output (b"" = all False)."""
    return [bool(data[i // 8] >> (i % 8) & 1) if i // 8 < len(data) else False for i in range(n)]
