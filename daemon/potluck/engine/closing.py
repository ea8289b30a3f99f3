"""When a round under "ready" pacing stops collecting (rounds/schedule.py).

A keeper closes round r, and starts its first attempt, at the first of:

* every contributor that declared itself for round r (a signed declaration, rounds/declarations.py)
  has an update this keeper holds, or the held updates carry the manifest's ``target_samples``. A
  contributor declares for round r + 1 as it publishes its round-r update, and again when V_{r+1}
  reaches it: so round r + 1 does not close on whoever happens to see its base first;
* another keeper's signed entry for the round's first attempt is there: it closed, so we join it
  (the entries then fix one set of updates for everyone, whoever closed first);
* the clock bound: ``(1 - AGGREGATION_FRACTION) * round_seconds`` after the round opened here, or
  after its first update arrived, whichever is later (a declared contributor that died costs this).

So the close is decided by signed records, never by one node's timing alone. A round without any
update does not close: there is nothing to merge, and the next update is the first of the same round.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import NamedTuple

from potluck.engine.updates import AcceptedUpdates
from potluck.exchange.service import HeldUpdate
from potluck.manifest import Manifest
from potluck.rounds import schedule
from potluck.rounds.commit import Commit
from potluck.rounds.declarations import BadDeclaration, Declaration, close_reason, declarations_key
from potluck.rounds.entries import BadEntry, RoundEntry, entries_key
from potluck.swarm.bulletin import Bulletin

LOCAL_CHECK_S = 0.05  # what we hold changes without a post (a fetch, a push): looked at this often
# declarations and entries not pushed to us are looked for in the DHT: first after this long, then
# twice as long after each read that changed nothing, up to the longest (an idle run stays quiet)
DHT_READ_S, IDLE_READ_S = 1.0, 8.0


class Closer:
    def __init__(
        self, *, bulletin: Bulletin, manifest: Manifest, me: bytes, excluded: Callable[[bytes], bool]
    ):
        self._bulletin, self._manifest, self._me, self._excluded = bulletin, manifest, me, excluded
        self._first_held: dict[int, float] = {}  # round -> when its first eligible update was held here
        self._read_dht_at = 0.0
        self._read_every = DHT_READ_S
        self._seen: tuple[int, int] = (0, 0)  # (eligible updates, declarations) at the last look
        self.waiting_for = 0  # declared contributors without an update yet (for status)

    async def wait(
        self, r: int, version: str, opened: float, held: Callable[[], list[HeldUpdate]], timeout: float,
        first: int = 0, bases: frozenset[str] = frozenset(),
    ) -> str | None:  # fmt: skip
        """Why round ``r`` (onto ``version``, open here since ``opened``) closes, once it does; None
        after ``timeout`` seconds without closing. ``held``: the updates eligible for the round;
        ``first``: the index of the attempt a peer that closed it would be in; ``bases``: versions a
        declaration for round r may name beside ``version`` (V_{r-1}: declared with the last update)."""
        bases = bases | {version}
        run = self._manifest.run_id
        keys = (declarations_key(run, r), entries_key(run, r, first))
        give_up = time.time() + timeout
        while True:
            now = time.time()
            network = now >= self._read_dht_at
            if network:
                self._read_every = min(2 * self._read_every, IDLE_READ_S)
                self._read_dht_at = now + self._read_every
            updates = held()
            if updates:
                self._first_held.setdefault(r, now)
            samples: dict[bytes, int] = {}
            for u in updates:
                samples[u.author] = samples.get(u.author, 0) + u.sample_count
            declared = await self._declared(keys[0], r, bases, network)
            self.waiting_for = len(declared - samples.keys())
            if (len(updates), len(declared)) != self._seen:  # things move: look at the DHT often again
                self._seen = (len(updates), len(declared))
                self._read_every = DHT_READ_S
                self._read_dht_at = min(self._read_dht_at, now + DHT_READ_S)
            reason = close_reason(declared, samples, self._manifest.target_samples)
            if reason is not None:
                return reason
            if updates and await self._joined(keys[1], r, first, version, network):
                return "another keeper closed it"
            bound = max(opened, self._first_held.get(r, now)) + schedule.collecting_seconds(self._manifest)
            if updates and now >= bound:
                return f"its clock bound ({schedule.collecting_seconds(self._manifest):.0f} s) passed"
            if now >= give_up:
                return None
            await asyncio.sleep(LOCAL_CHECK_S)  # local reads only: pushes land in the bulletin meanwhile

    def forget_before(self, r: int) -> None:
        """Round ``r`` opened: older rounds are done with, and the new one is looked at closely (the
        pushes first: the DHT only DHT_READ_S in, so that a round of a second costs no DHT read)."""
        self._read_every, self._read_dht_at, self._seen = DHT_READ_S / 2, time.time() + DHT_READ_S, (0, 0)
        for old in [k for k in self._first_held if k < r]:
            del self._first_held[old]

    async def _declared(self, key: str, r: int, bases: frozenset[str], network: bool) -> set[bytes]:
        out = set()
        for subkey, item in (await self._bulletin.get(key, network=network)).items():
            with contextlib.suppress(BadDeclaration):
                d = Declaration.verify(item.value)
                if (d.run, d.round, d.author) == (self._manifest.run_id, r, subkey) and d.base in bases:
                    out.add(d.author)
        return out

    async def _joined(self, key: str, r: int, attempt: int, version: str, network: bool) -> bool:
        for subkey, item in (await self._bulletin.get(key, network=network)).items():
            with contextlib.suppress(BadEntry):
                e = RoundEntry.verify(item.value)
                ours = (self._manifest.run_id, r, attempt, version, subkey)
                if (
                    (e.run, e.round, e.attempt, e.base, e.node) == ours
                    and e.node != self._me
                    and not self._excluded(e.node)
                ):
                    return True
        return False


class Carried(NamedTuple):
    """What a "ready" round r carries over from round r - 1: V_{r-1} and the updates V_r merged."""

    parent: str
    merged: frozenset[str]


def carried(manifest: Manifest, commit: Commit | None, version: str) -> Carried | None:
    """Under "ready" pacing, round r also merges the updates onto V_{r-1} that V_r did not: what
    arrived after round r - 1 closed. ``commit``: the one that made ``version`` (None: genesis)."""
    if manifest.pacing != "ready" or commit is None or commit.version != version:
        return None
    return Carried(commit.parent, frozenset(commit.updates))


def eligible(exchange: AcceptedUpdates, r: int, version: str, carry: Carried | None) -> list[HeldUpdate]:
    """The held updates round ``r`` merges: onto V_r, and (carried) onto V_{r-1} but not in V_r."""
    out = [u for u in exchange.holding(r) if u.base == version]
    if carry is not None and r > 0:
        out += [
            u for u in exchange.holding(r - 1) if u.base == carry.parent and u.update_id not in carry.merged
        ]
    return out
