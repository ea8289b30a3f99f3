"""A tiny lab of Linux network namespaces for multi-host tests: N hosts, each with one veth into a
bridge that lives in its own "switch" namespace, so nothing touches the machine's own network.

    host i (potluck-h<i>-<suffix>)          switch (potluck-sw-<suffix>)
      lo up, eth0 = 10.77.<net>.<i>/24  <->   p<i> --- br0

``cut(i)`` / ``restore(i)`` set the switch side of host i's cable down / up: host i keeps its
address and route and simply stops hearing from anybody, as when a cable is pulled further away.
Needs root and ``ip netns``; :func:`unavailable` says why a test has to skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from potluck.rpc.address import API_FILE

PREFIX = "potluck-"


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run the netns tests as root)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    name = f"{PREFIX}probe-{secrets.token_hex(4)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    return None


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


class Lab:
    """``hosts`` namespaces on one bridge; a context manager that removes everything it made."""

    def __init__(self, hosts: int, net: int | None = None):
        self.suffix = secrets.token_hex(3)
        self.net = secrets.randbelow(250) + 1 if net is None else net
        self.switch = f"{PREFIX}sw-{self.suffix}"
        self.hosts = [f"{PREFIX}h{i}-{self.suffix}" for i in range(1, hosts + 1)]
        self._made: list[str] = []

    def ip(self, i: int) -> str:
        """Host i's address (hosts are numbered from 1)."""
        return f"10.77.{self.net}.{i}"

    def ns(self, i: int) -> str:
        return self.hosts[i - 1]

    def setup(self) -> Lab:
        for name in [self.switch, *self.hosts]:
            _ip("netns", "add", name)
            self._made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts, start=1):
            # both ends are created directly in their namespaces: no name ever appears in ours
            _ip(
                "link",
                "add",
                "eth0",
                "netns",
                host,
                "type",
                "veth",
                "peer",
                "name",
                f"p{i}",
                "netns",
                self.switch,
            )
            _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", host, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")
        return self

    def cut(self, i: int) -> None:
        _ip("-n", self.switch, "link", "set", f"p{i}", "down")

    def restore(self, i: int) -> None:
        _ip("-n", self.switch, "link", "set", f"p{i}", "up")

    def exec_args(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i)]

    def teardown(self) -> list[str]:
        """Kill whatever still runs in our namespaces, delete them; return the ones that survived."""
        for name in self._made:
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        left = [n for n in namespaces() if n in self._made]
        self._made = left
        return left

    def __enter__(self) -> Lab:
        try:
            return self.setup()
        except BaseException:
            self.teardown()
            raise

    def __exit__(self, *exc: object) -> None:
        self.teardown()


class NsNode:
    """One `potluck run` inside host i's namespace, in its own session; its CLI runs there too (the
    control API listens on that namespace's loopback)."""

    def __init__(self, lab: Lab, i: int, data_dir: Path, args: Sequence[str]):
        self.lab, self.i, self.data_dir, self.args = lab, i, data_dir, list(args)
        self.log_path = data_dir / "node.log"
        self.proc: subprocess.Popen | None = None
        self._terminated = False

    def start(self) -> NsNode:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.data_dir / API_FILE).unlink(missing_ok=True)
        self._terminated = False
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.lab.exec_args(self.i),
                    sys.executable,
                    "-m",
                    "potluck",
                    "run",
                    "--data-dir",
                    str(self.data_dir),
                    *self.args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # `ip netns exec` execs: the group leader is the node itself
            )
        return self

    def cli(self, *args: str) -> subprocess.Popen:
        """Start `potluck ARGS --data-dir D --json` in the node's namespace (read it with :func:`result`)."""
        return subprocess.Popen(
            [
                *self.lab.exec_args(self.i),
                sys.executable,
                "-m",
                "potluck",
                *args,
                "--data-dir",
                str(self.data_dir),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ask(self, *args: str) -> Any:
        return result(self.cli(*args))

    def status(self) -> dict[str, Any]:
        return self.ask("status")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM the node, once (a second one means "hurry"); :meth:`stop` then waits for it."""
        if self.proc is not None and self.proc.poll() is None and not self._terminated:
            self._terminated = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL the whole process group (p2pd) after ``timeout``."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # children that outlived the node
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def result(proc: subprocess.Popen, timeout: float = 15.0) -> Any:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {err.strip()}")
    return json.loads(out)


def ask_all(nodes: Sequence[NsNode], *args: str) -> list[Any]:
    """The same CLI query on every node, in parallel."""
    procs = [n.cli(*args) for n in nodes]
    return [result(p) for p in procs]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as e:  # a node still starting, a CLI call that timed out: keep polling
            last = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({last})" if last else ""))
