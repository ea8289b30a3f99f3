"""Run a `potluck` command under a pseudo-terminal, as a person at a terminal would; read what it draws."""

from __future__ import annotations

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
        """Ctrl-C (SIGINT), as the terminal sends it; the exit code."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout)
        while select.select([self._master], [], [], 0.2)[0]:  # what it drew on its way out
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # closed: all read
                break
            if not chunk:
                break
            self.screen += chunk
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self._master)
