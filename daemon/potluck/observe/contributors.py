"""The dashboard's contributors table: one row per author the committed history names, with the rounds
that list it, its ban and probation, and, for the merged updates this node still holds, their bytes,
samples and the merge weight each round gave them (vcs/repo.py's rule: the manifest's weight of the
sample count, 0 while the author was on probation).

A commit names its updates and its contributors, not which author wrote which update: an update that
is not held here (collected before this node joined, or removed) is counted in ``not_held`` and adds
to nobody's bytes. Commits and updates never change, so each is read once and kept (keyed by commit
id: a fork switch that replaces a round reads the new commit). The page is served on the node's event
loop: one call reads at most :data:`READ_BUDGET_ROUNDS` commits and :data:`READ_BUDGET_BYTES` of
update files (newest rounds first) and leaves the rest ``pending`` for the next polls, so a long
history of large updates never stalls a round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from potluck.defence import probation
from potluck.manifest import Manifest
from potluck.rounds.commit import commit_id
from potluck.store.history import History
from potluck.store.updates import UpdateStore
from potluck.updates.codec import parse_update
from potluck.updates.reasons import UpdateRejected
from potluck.vcs.repo import merge_weight

Row = dict[str, Any]
# update files read per call: parse_update took ~12 ms per 16 MiB of 3.4 MiB updates, in memory, on the
# project's 2-core machine (a one-off timing), plus reading the files
READ_BUDGET_BYTES = 16 << 20
# commits read per call: all 100 rounds of a toy history (2 updates each) took ~75 ms in one call, 8-12 ms
# a call 25 at a time (build_history, this machine; a one-off timing)
READ_BUDGET_ROUNDS = 25


@dataclass(frozen=True)
class Merged:
    """An update a commit lists and this node holds."""

    author: str  # node id (hex)
    size: int  # bytes of the signed update
    samples: int
    weight: int | None  # None: no manifest to say


class Contributors:
    """The table, read from ``history`` (its full log: probation counts every round) and ``updates``."""

    def __init__(self, history: History, updates: UpdateStore, manifest: Manifest | None) -> None:
        self._history, self._updates, self._manifest = history, updates, manifest
        self._updates_seen: dict[str, tuple[str, int, int] | None] = {}  # id -> author, size, samples
        self._rounds: dict[str, tuple[list[Merged], int]] = {}  # commit id -> held updates, not held

    def _read(self, update_id: str, budget: list[int]) -> bool:
        """Read one update into the cache unless this call's budget is spent (then False)."""
        if update_id in self._updates_seen:
            return True
        try:
            size = self._updates.path(update_id).stat().st_size
            if budget[0] <= 0:
                return False
            budget[0] -= size
            data = self._updates.get(update_id)
            p = parse_update(data)  # structure and signature: the file is what its id names
            self._updates_seen[update_id] = (p.author.hex(), len(data), p.sample_count)
        except (OSError, ValueError, UpdateRejected):
            self._updates_seen[update_id] = None  # not held (or damaged); a commit's updates come before it
        return True

    def _round(self, entry: Row, log: list[Row], budget: list[int]) -> tuple[list[Merged], int] | None:
        """A commit's held updates and the count of those not held; None while some are still unread."""
        if entry["commit"] in self._rounds:
            return self._rounds[entry["commit"]]
        if budget[1] <= 0:
            return None
        budget[1] -= 1
        commit = self._history.get(entry["round"])
        ids = commit.updates if commit is not None and commit_id(commit) == entry["commit"] else ()
        if not all([self._read(uid, budget) for uid in ids]):
            return None
        seniority = probation.contributions(log, before=entry["round"])
        merged, missing = [], 0
        for uid in ids:
            held = self._updates_seen[uid]
            if held is None:
                missing += 1
                continue
            author, size, samples = held
            weight = merge_weight(self._manifest, author, samples, seniority) if self._manifest else None
            merged.append(Merged(author, size, samples, weight))
        for uid in ids:  # the round's numbers are kept: its updates' need not be
            self._updates_seen.pop(uid, None)
        self._rounds[entry["commit"]] = (merged, missing)
        return merged, missing

    def table(self, window: list[Row], log: list[Row], status: dict[str, Any]) -> dict[str, Any]:
        """The rows over the rounds of ``window`` (the newest of ``log``, the full history), most rounds
        first; ``not_held``: their updates not held here; ``pending``: rounds whose updates are not
        read yet (the next calls read them)."""
        budget = [READ_BUDGET_BYTES, READ_BUDGET_ROUNDS]
        read = {e["commit"]: self._round(e, log, budget) for e in reversed(window)}
        rows: dict[str, Row] = {}

        def row(node: str) -> Row:
            return rows.setdefault(
                node, {"node_id": node, "rounds": 0, "last_round": -1, "updates": 0, "bytes": 0, "samples": 0,
                       "weight": 0 if self._manifest else None},
            )  # fmt: skip

        not_held = 0
        for entry in window:
            for node in entry["contributors"]:
                r = row(node)
                r["rounds"] += 1
                r["last_round"] = max(r["last_round"], entry["round"])
            if (got := read[entry["commit"]]) is None:
                continue
            merged, missing = got
            not_held += missing
            for m in merged:
                r = row(m.author)
                r["updates"] += 1
                r["bytes"] += m.size
                r["samples"] += m.samples
                if m.weight is not None:
                    r["weight"] += m.weight
        defence = status.get("defence") or {}
        bans = {b["node_id"]: b["reason"] for b in defence.get("bans", [])}
        probation_left = {p["node_id"]: p["rounds_left"] for p in defence.get("probation", [])}
        for node in bans.keys() | probation_left.keys():
            row(node)
        for node, r in rows.items():
            r["ban"] = bans.get(node, "")
            r["probation_rounds_left"] = probation_left.get(node, 0)
        return {
            "rows": sorted(rows.values(), key=lambda r: (-r["rounds"], r["node_id"])),
            "not_held": not_held,
            "pending": sum(1 for got in read.values() if got is None),
        }
