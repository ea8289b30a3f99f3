"""Freezing an attempt: every participant publishes a signed entry listing the round's updates it
holds under the (round, attempt) key (stored in the DHT and pushed to the other keepers), reads
everyone's, and checks the exclusions they name (defences). The entries, the same set on every node,
are what the assignment and the placement are derived from (rounds/entries.py).

Reading stops once every live participant's entry is in (at least ENTRY_MIN_S after ours, so that a
peer one push behind is not left out, and never early for a node that sees no other participant),
else after ENTRY_WINDOW_S plus a grace while some are missing. An attempt that may run the all-reduce
reads for the whole window: its all-reduce starts at a fixed time anyway, and hivemind's matchmaking
fails far slower (9 s against 2 s, tests/engine/test_failures.py) for a peer that stops once in it
than for one that stops before."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from potluck.defence.service import DefenceError, DefenceService
from potluck.engine.attempt import AttemptFailed, sleep_until
from potluck.engine.commit import commits_key, parse_signed_commit
from potluck.engine.conduct import Conduct
from potluck.identity import NodeIdentity
from potluck.rounds.commit import CommitError
from potluck.rounds.entries import BadEntry, RoundEntry, entries_key
from potluck.swarm.bulletin import Bulletin
from potluck.swarm.membership import PeerInfo

logger = logging.getLogger(__name__)

ENTRY_WINDOW_S = 1.0  # participants publish entries, then everyone reads the same set
ENTRY_MIN_S = 0.15  # the least a participant waits for the others' entries, all of them in or not
ENTRY_GRACE_S = 0.4  # re-reads while live peers' entries are missing
ENTRY_TTL_S = 3600.0


class EntryBoard:
    def __init__(
        self,
        *,
        bulletin: Bulletin,
        identity: NodeIdentity,
        run_id: str,
        peers: Callable[[], list[PeerInfo]],
        conduct: Conduct,
        excluded: Callable[[bytes], bool],
        defence: DefenceService | None = None,
        still_open: Callable[[int], bool] = lambda r: True,
    ):
        self._bulletin, self._identity, self._run_id = bulletin, identity, run_id
        self._peers, self._conduct = peers, conduct
        self._excluded = excluded  # a convicted reducer's entries are ignored
        self._defence = defence  # bans and probation ride on the entries (see DefenceService.entry_extras)
        self._still_open = still_open  # round -> not committed yet: its entries still matter in the DHT

    async def freeze(
        self, r: int, attempt: int, version: str, start: float, entered: float, held: list[str],
        meanwhile: Callable[[], Awaitable[None]] | None = None, early: bool = True,
    ) -> list[RoundEntry]:  # fmt: skip
        """The participants' entries of attempt ``attempt`` of round ``r`` onto ``version``, sorted by
        node, ours included; ``held``: the ids our entry lists (the engine's eligible updates);
        ``meanwhile`` runs while they gather (bounded: a slow DHT must not make this node late);
        ``early``: stop reading once every live participant's entry is in (else: the whole window)."""
        held = self._conduct.entry_ids(r, held)
        extras = self._defence.entry_extras(r, held) if self._defence is not None else {}
        mine = RoundEntry(self._run_id, r, attempt, version, self._identity.public_key, tuple(held), **extras)
        key = entries_key(self._run_id, r, attempt)
        keepers = [p for p in self._peers() if p.record.role != "client"]
        self._bulletin.post(
            key, self._identity.public_key, mine.sign(self._identity), start + ENTRY_TTL_S,
            to=[p.record.peer_id for p in keepers], store=lambda: self._still_open(r),
        )  # fmt: skip
        if meanwhile is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(meanwhile(), max(0.0, entered + ENTRY_WINDOW_S - time.time()))
        on_version = self._signed(r, version)
        expected = 1 + sum(
            (p.record.model_version == version or p.node_id in on_version)
            and not self._excluded(bytes.fromhex(p.node_id))
            for p in keepers
        )
        # the pushed entries as they arrive, the DHT's at the window's end and while some are missing.
        # Seeing no other live participant is as likely a stale view of the records (a DHT busy with
        # an all-reduce) as being alone: that waits out the window
        await sleep_until(entered + ENTRY_MIN_S)
        entries = await self._read(key, r, attempt, version, network=False)
        alone = expected == 1 or not early
        while (len(entries) < expected or alone) and time.time() < entered + ENTRY_WINDOW_S:
            posts = self._bulletin.posts(key)
            await self._bulletin.wait(key, entered + ENTRY_WINDOW_S - time.time(), since=posts)
            entries = await self._read(key, r, attempt, version, network=False)
        if len(entries) < expected or alone:
            entries = await self._read(key, r, attempt, version)
        while len(entries) < expected and time.time() < entered + ENTRY_WINDOW_S + ENTRY_GRACE_S:
            await asyncio.sleep(0.1)  # a slow DHT under load: every participant waits for the same set
            entries = await self._read(key, r, attempt, version)
        if self._identity.public_key not in {e.node for e in entries}:
            entries.append(mine)  # our own store may not be visible yet; we know what we said
        entries.sort(key=lambda e: e.node)
        await self._check_defences(entries, entered)
        return entries

    def _signed(self, r: int, version: str) -> set[str]:
        """Node ids that signed the commit making ``version`` (pushed to us: no network): they hold it,
        even while their peer records (read every few seconds when rounds last one) name the one before."""
        out: set[str] = set()
        if r > 0:
            for item in self._bulletin.cached(commits_key(self._run_id, r - 1)).values():
                with contextlib.suppress(CommitError):
                    commit, signature = parse_signed_commit(item.value)
                    if commit.version == version:
                        out.add(signature.node_id)
        return out

    async def _read(
        self, key: str, r: int, attempt: int, version: str, network: bool = True
    ) -> list[RoundEntry]:
        entries = []
        for subkey, item in (await self._bulletin.get(key, network=network)).items():
            try:
                entry = RoundEntry.verify(item.value)
            except BadEntry as e:
                logger.debug(f"ignoring round entry: {e}")
                continue
            if (entry.run, entry.round, entry.attempt, entry.node) != (self._run_id, r, attempt, subkey):
                continue
            if entry.base != version:  # on another branch: it will sync, not take part
                continue
            if self._excluded(entry.node):
                continue
            entries.append(entry)
        return entries

    async def _check_defences(self, entries: list[RoundEntry], entered: float) -> None:
        """Every exclusion an entry names must be backed by evidence we verified (or verify now, before
        the contributions are due); else this attempt stops here, the same way on every honest node."""
        if self._defence is not None:
            try:
                await self._defence.check_entries(entries, entered + ENTRY_WINDOW_S + ENTRY_GRACE_S + 0.5)
            except DefenceError as e:
                raise AttemptFailed(str(e)) from None
