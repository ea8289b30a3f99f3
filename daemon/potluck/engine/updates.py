"""What the engine needs of the update exchange (potluck.exchange.service.UpdateExchange is one):
the accepted updates of a round, each decoded once by the exchange when it validated it, and the
round the exchange validates for."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

from potluck.engine.attempt import QUORUM_MARGIN_S, AttemptFailed
from potluck.exchange.service import HeldUpdate
from potluck.updates.codec import SignedUpdate


@runtime_checkable
class AcceptedUpdates(Protocol):
    def holding(self, round_: int | None = None) -> list[HeldUpdate]:
        """The held updates (of ``round_``), a snapshot."""
        ...

    def held_update(self, update_id: str) -> HeldUpdate | None: ...

    def decoded(self, update_id: str) -> SignedUpdate:
        """A held update, decoded (and verified) when it was accepted; KeyError if not held."""
        ...

    def set_context(self, *, round: int, known_bases: frozenset[str]) -> None:
        """Validate updates for ``round`` onto one of ``known_bases`` from now on."""
        ...


async def wait_for_updates(exchange: AcceptedUpdates, ids: list[str], until: float) -> list[SignedUpdate]:
    """``ids``, decoded, once the exchange holds them all; AttemptFailed when that leaves too little of
    the attempt (until ``until``) to collect signatures."""
    while missing := [uid for uid in ids if exchange.held_update(uid) is None]:
        if time.time() > until - 2 * QUORUM_MARGIN_S:
            raise AttemptFailed(
                f"{len(missing)} of the round's {len(ids)} updates not fetched in time (their holders "
                "offline or too slow)"
            )
        await asyncio.sleep(0.05)  # local: a push or a fetch lands meanwhile
    # decoded at acceptance; only an update held since before a restart is decoded here (off the loop)
    return await asyncio.to_thread(lambda: [exchange.decoded(uid) for uid in ids])
