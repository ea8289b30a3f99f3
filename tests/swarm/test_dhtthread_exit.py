"""The DHT thread's loop at process exit: the pending tasks a killed daemon thread leaves are not printed
after the command's last line; any other loop error still is (swarm/dhtthread.py)."""

from __future__ import annotations

import asyncio
import logging

from potluck.swarm.dhtthread import _quiet_at_exit


def test_only_the_tasks_a_dying_thread_leaves_are_dropped(caplog) -> None:
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            _quiet_at_exit(loop, {"message": "Task was destroyed but it is pending!", "task": None})
            assert caplog.records == []
            _quiet_at_exit(loop, {"message": "Exception in callback"})
        assert [r.getMessage() for r in caplog.records] == ["Exception in callback"]
    finally:
        loop.close()
