"""Run a `potluck` command under a pseudo-terminal, as a person at a terminal would; read what it draws."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import time


class Terminal:
    """``potluck ARGS`` with a pseudo-terminal as its stdin, stdout and stderr."""

    def __init__(self, *args: str) -> None:
        self._master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "potluck", *args], stdin=slave, stdout=slave, stderr=slave, close_fds=True
        )
        os.close(slave)
        self.screen = b""

    def read_until(self, predicate, timeout: float) -> bytes:
        """Everything drawn so far, once ``predicate(everything)`` holds; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate(self.screen):
            left = deadline - time.monotonic()
            assert left > 0, f"the terminal never showed what was expected:\n{self.screen[-2000:]!r}"
            ready, _, _ = select.select([self._master], [], [], min(left, 0.2))
            if ready:
                try:
                    self.screen += os.read(self._master, 65536)
                except OSError:  # the child closed the terminal
                    time.sleep(0.05)
        return self.screen

    def interrupt(self, timeout: float = 10.0) -> int:
        """Ctrl-C (SIGINT), as the terminal sends it; the exit code. The terminal is read meanwhile: a
        child writing into a full terminal buffer would otherwise block and never exit."""
        self.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self._master], [], [], 0.1)
            chunk = b""
            if ready:
                with contextlib.suppress(OSError):  # closed: the child is gone
                    chunk = os.read(self._master, 65536)
                self.screen += chunk
            if not chunk and self.proc.poll() is not None:
                return self.proc.returncode
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.proc.args, timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self._master)
