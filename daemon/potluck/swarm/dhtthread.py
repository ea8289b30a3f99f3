"""hivemind's DHT, served by a thread of the daemon instead of a forked child process.

hivemind forks a process per DHT: a copy of the daemon (~50 MB resident, most of it pages still
shared with the parent and so counted twice) that only relays requests. Here the same object serves
from a thread with its own event loop, so a node is its python and its p2pd. hivemind's command pipe
stays as it is, so an averager forked from the daemon still reaches the DHT through it; calls from
the daemon itself skip the pipe (:meth:`ThreadDHT.call`). They must: a future sent down the pipe
arrives as a copy, and in the process that made it hivemind completes the copy, not the original.

The one input that crashed hivemind's DHT process, deeply nested msgpack, is refused by
potluck.swarm.guard before hivemind decodes it. Should the thread's loop end anyway, ``is_alive()``
turns false and the host starts another on the same p2pd.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from hivemind.dht import DHT, DHTNode
from hivemind.p2p import P2P
from hivemind.utils.mpfuture import MPFuture

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ThreadDHT(DHT):
    """A hivemind DHT whose node runs on a thread of this process (see the module docstring)."""

    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None  # the thread's, while the node serves
    _stop: asyncio.Event | None = None  # set on that loop to end the thread

    def run_in_background(self, await_ready: bool = True, timeout: float | None = None) -> None:
        self._thread = threading.Thread(target=self._serve, name="dht", daemon=True)
        self._thread.start()
        if await_ready:
            self.wait_until_ready(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def call(self, fn: Callable[[DHT, DHTNode], Awaitable[T]]) -> concurrent.futures.Future[T]:
        """Run ``fn(dht, node)`` on the DHT's loop; callable from any thread of this process."""
        if self._loop is None or not self.is_alive():
            raise ConnectionError("the DHT is not running")
        return asyncio.run_coroutine_threadsafe(fn(self, self._node), self._loop)

    # hivemind's pipe API, from this process: straight to the loop (see the module docstring)

    def run_coroutine(
        self, coro: Callable[[DHT, DHTNode], Awaitable[T]], return_future: bool = False
    ) -> T | MPFuture[T]:
        if os.getpid() != self._parent_pid:  # a forked process (an averager): hivemind's pipe
            return super().run_coroutine(coro, return_future)
        future: MPFuture[T] = MPFuture()
        _forward(self.call(coro), future)
        return future if return_future else future.result()

    def get(self, key: Any, latest: bool = False, return_future: bool = False, **kwargs: Any) -> Any:
        if os.getpid() != self._parent_pid:
            return super().get(key, latest, return_future, **kwargs)
        return self.run_coroutine(
            functools.partial(_node_call, "get", (key,), dict(kwargs, latest=latest)), return_future
        )

    def store(
        self,
        key: Any,
        value: Any,
        expiration_time: float,
        subkey: Any = None,
        return_future: bool = False,
        **kwargs: Any,
    ) -> Any:
        if os.getpid() != self._parent_pid:
            return super().store(key, value, expiration_time, subkey, return_future, **kwargs)
        args = (key, value, expiration_time)
        return self.run_coroutine(
            functools.partial(_node_call, "store", args, dict(kwargs, subkey=subkey)), return_future
        )

    def shutdown(self, timeout: float = 3.0) -> None:
        """Stop the node and wait up to ``timeout`` for the thread (a daemon thread: it cannot outlive us)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def __del__(self) -> None:  # hivemind's would shut a process down; the host stops us explicitly
        pass

    # ---- the thread ---------------------------------------------------------------------------------

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # this thread's only: the daemon's loop is untouched
        loop.set_exception_handler(_quiet_at_exit)
        try:
            loop.run_until_complete(self._serve_async())
        except Exception as e:  # never silently: the host sees is_alive() fall and restarts us
            logger.error(f"the DHT stopped: {type(e).__name__}: {e}")
        finally:
            self._loop = None
            pending = asyncio.all_tasks(loop)  # hivemind's own, left running: end them here, not at exit
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve_async(self) -> None:
        p2p = None
        try:
            p2p = await P2P.replicate(self._daemon_listen_maddr) if self._daemon_listen_maddr else None
            self._node = await DHTNode.create(
                initial_peers=self.initial_peers,
                num_workers=self.num_workers,
                record_validator=self._record_validator,
                p2p=p2p,
                **self.kwargs,
            )
        except Exception as e:
            self._ready.set_exception(e)
            if p2p is not None:
                await p2p.shutdown()
            return
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set_result(None)
        try:
            await self._serve_pipe(self._stop)
        finally:  # the replica is ours to close (hivemind's process exit closed it)
            self._loop = None
            await self._node.shutdown()
            if p2p is not None:
                await p2p.shutdown()

    async def _serve_pipe(self, stop: asyncio.Event) -> None:
        """Until ``stop``: hivemind's commands from forked processes (averagers): (method, args, kwargs)."""
        loop, wake, running = asyncio.get_running_loop(), asyncio.Event(), set()
        loop.add_reader(self._inner_pipe.fileno(), wake.set)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                woken = asyncio.ensure_future(wake.wait())
                await asyncio.wait((woken, stopping), return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                wake.clear()
                while not stop.is_set() and self._inner_pipe.poll():
                    try:
                        method, args, kwargs = self._inner_pipe.recv()
                    except (OSError, EOFError):  # every writer closed the pipe: nothing more will come
                        return
                    task = asyncio.create_task(getattr(self, method)(*args, **kwargs))
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            stopping.cancel()
            loop.remove_reader(self._inner_pipe.fileno())
            for task in running:
                task.cancel()


def _quiet_at_exit(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The thread's loop's exception handler. A process that exits while its DHT is still shutting down
    (the host waits 2 s) ends the daemon thread mid-loop, and the interpreter then destroys its pending
    tasks: asyncio would print each after the command's last line (its error, its exit). Expected then,
    and logging may be closed by then: dropped; anything else as asyncio would."""
    if not str(context.get("message", "")).startswith("Task was destroyed but it is pending"):
        loop.default_exception_handler(context)


async def _node_call(method: str, args: tuple, kwargs: dict[str, Any], _dht: DHT, node: DHTNode) -> Any:
    return await getattr(node, method)(*args, **kwargs)


def _forward(source: concurrent.futures.Future[T], target: MPFuture[T]) -> None:
    """Complete ``target`` (awaitable, made on the caller's thread) when ``source`` completes."""

    def done(f: concurrent.futures.Future[T]) -> None:
        if target.done():
            return
        if f.cancelled():
            target.cancel()
        elif f.exception() is not None:
            target.set_exception(f.exception())
        else:
            target.set_result(f.result())

    source.add_done_callback(done)
