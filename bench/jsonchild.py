"""A benchmark's helper process: a bench script re-run with other arguments, in a session of its own (so
p2pd, the DHT and averager processes it starts die with it), that reports JSON lines on stdout and
takes commands as JSON lines on stdin; EOF on stdin asks it to exit."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO, Any


class JsonChild:
    """``python ARGV`` with its events in :attr:`events` (``{"event": "exit"}`` when stdout closes)."""

    def __init__(self, argv: Sequence[str], stderr: IO[Any] | int) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        env = {**os.environ, "HIVEMIND_LOGLEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        self.events.put({"event": "exit"})

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        """EOF on stdin: the child shuts down what it started and exits."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def join(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers: p2pd, DHT and averager processes
        self.proc.wait()
