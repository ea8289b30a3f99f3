"""Run a function in a fresh interpreter, for tests that start a hivemind DHT of their own.

hivemind's DHT forks its process. Forking the pytest process, which by then runs gRPC and hivemind
threads of earlier tests, can leave the child stuck on a lock another thread held at the fork: the
DHT never reports ready (seen once in four CI runs, and reproduced with a node swarm starting
beside it). A spawned interpreter has no such threads, and a stuck one is killed after ``timeout``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
from collections.abc import Callable
from typing import Any

import psutil


def _call(out: Any, fn: Callable[..., Any], args: tuple) -> None:
    try:
        out.put(("ok", fn(*args)))
    except BaseException as e:  # anything: the test re-raises it
        out.put(("error", f"{type(e).__name__}: {e}"))


def run_spawned(fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> Any:
    """``fn(*args)`` in a spawned process (``fn`` and its result must pickle); raises on error or timeout."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_call, args=(out, fn, args))
    proc.start()
    try:
        status, value = out.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"{fn.__name__} did not finish in {timeout:.0f} s") from None
    finally:
        proc.join(10)
        if proc.is_alive():  # stuck: the process and whatever it started (a DHT, its p2pd)
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
            proc.kill()
            proc.join()
    if status == "error":
        raise RuntimeError(f"{fn.__name__} failed in its process: {value}")
    return value
