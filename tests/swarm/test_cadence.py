"""potluck.swarm.cadence: back off while nothing changes, come back on a change or a wake."""

from __future__ import annotations

import asyncio
import time

from potluck.swarm.cadence import Cadence


def test_the_interval_doubles_while_quiet_up_to_the_cap_and_resets_on_a_change():
    c = Cadence(1.0, 6.0)
    assert [c.after(False) for _ in range(4)] == [2.0, 4.0, 6.0, 6.0]
    assert c.after(True) == 1.0
    assert Cadence(2.0, 0.5).after(False) == 2.0  # a cap below the base is the base


def test_a_wake_cuts_the_sleep_short_and_is_taken_once():
    async def scenario() -> tuple[float, bool, bool]:
        c = Cadence(1.0, 60.0)
        asyncio.get_running_loop().call_later(0.05, c.wake)
        started = time.monotonic()
        await c.sleep(30.0)
        return time.monotonic() - started, c.take_wake(), c.take_wake()

    slept, first, second = asyncio.run(scenario())
    assert slept < 5.0 and first and not second
