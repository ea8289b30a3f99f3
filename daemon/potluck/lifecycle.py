"""Running a node as a process: until SIGINT/SIGTERM or the end of the work beside it (a contributor's
training loop), then a shutdown bounded in time that kills what will not stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import Any, Protocol

from potluck.joining import NodeConfig
from potluck.node import Node
from potluck.observe import logs
from potluck.observe.serve import Observers

logger = logging.getLogger(__name__)

SHUTDOWN_BUDGET_S = 5.0


class Worker(Protocol):
    """Work that runs beside a node (a contributor's training loop) and ends the node when it ends."""

    async def run(self) -> None: ...
    def stop(self) -> None: ...


def log_context(node: Node) -> dict[str, Any]:
    """What a JSON log line says of the node: its id, run, and the round it is in (the engine's; without
    rounds, the one its peer record names)."""
    round_ = max(node.engine.status.round, 0) if node.engine is not None else node.local.round
    return {"node": node.identity.node_id[:16] if node.identity else None, "run": node.run, "round": round_}


async def run_node(config: NodeConfig, make_worker: Callable[[Node], Worker] | None = None) -> None:
    """Run a node (and an optional worker) until SIGINT/SIGTERM or the worker's end, then shut down
    within SHUTDOWN_BUDGET_S. Startup and worker configuration errors propagate (ConfigError: exit 2)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    node = Node(config)
    observers = Observers(node, config.metrics_listen, config.dashboard_listen)
    await observers.start()  # before the node: a busy port fails fast (ConfigError: exit 2)

    def restore_signals() -> None:  # also after hivemind's averager set SIGINT to "ignore"
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

    restore_signals()
    node.restore_signals = restore_signals
    start = asyncio.create_task(node.start())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
    failure: BaseException | None = None
    if start.done():
        if start.exception() is not None:
            await observers.stop()
        start.result()  # raise a startup error (ConfigError -> exit 2); start() cleaned up already
        observers.publish()
        logs.set_context(lambda: log_context(node))
        for line in observers.urls():
            logger.info(line)
        worker = make_worker(node) if make_worker is not None else None
        work = asyncio.create_task(worker.run(), name="worker") if worker is not None else None
        await asyncio.wait({stopped, *([work] if work else [])}, return_when=asyncio.FIRST_COMPLETED)
        if worker is not None and work is not None:
            worker.stop()  # training leaves after its current step
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await asyncio.wait_for(work, SHUTDOWN_BUDGET_S / 2)
                except TimeoutError:
                    logger.warning("the worker did not stop in time")
                except Exception as e:  # e.g. ConfigError: report it after a clean shutdown
                    failure = e
    else:  # signalled while starting
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await start
    logger.info("shutting down")
    await observers.stop()
    if stop.is_set():  # a second signal ends us at once; a first one (we were leaving anyway) changes nothing
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, os._exit, 130)
    try:
        await asyncio.wait_for(node.stop(), SHUTDOWN_BUDGET_S - 0.5)
    except TimeoutError:
        logger.error("clean shutdown took too long; killing our child processes")
        if node.host is not None:
            for pid in node.host.child_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    logger.info("stopped")
    if failure is not None:
        raise failure
