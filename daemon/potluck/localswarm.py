"""A swarm of real `potluck run` and `potluck join` processes on 127.0.0.1: for `potluck demo`, the
tests and the benchmarks (start nodes, ask them over the control API, publish, wait for a round)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from potluck.manifest import Manifest
from potluck.rounds import schedule
from potluck.rpc.address import API_FILE

T = TypeVar("T")


class LocalNode:
    """One `potluck run` subprocess in its own session (so a test can kill it, children and all)."""

    def __init__(
        self,
        data_dir: Path,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        command: str = "run",
        module: str = "potluck",
        global_args: Sequence[str] = (),
    ):
        self.data_dir = data_dir
        self.args = list(args)
        self.command = command  # "run" (a keeper) or "join" (a contributor)
        self.module = module  # what `python -m` runs: tests start misbehaving nodes from their own modules
        self.log_path = data_dir / "node.log"
        self.global_args = list(global_args)  # flags of `potluck` itself, before the command: --log-format
        self._env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> LocalNode:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.data_dir / API_FILE).unlink(missing_ok=True)
        env = {**os.environ, **(self._env or {})}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    self.module,
                    *self.global_args,
                    self.command,
                    "--data-dir",
                    str(self.data_dir),
                    *self.args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def rpc_address(self) -> str:
        return (self.data_dir / API_FILE).read_text().strip()

    def wait_ready(self, timeout: float = 30.0) -> LocalNode:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log_tail()}")
            if not (self.data_dir / API_FILE).exists():
                return False
            with contextlib.suppress(Exception):
                self.status()
                return True
            return False

        wait_for(ready, timeout, f"node in {self.data_dir} to start")
        return self

    def status(self) -> dict[str, Any]:
        return self._ask("status")

    def peers(self) -> list[dict[str, Any]]:
        return self._ask("peers")["peers"]

    def updates(self) -> list[dict[str, Any]]:
        """The updates this node holds (``potluck update list``)."""
        return self._ask("updates")["updates"]

    def publish(self, data: bytes, timeout: float = 30.0) -> Any:
        """Hand a signed update to the node (``potluck update publish``): the PublishUpdateResponse."""
        from potluck.rpc.client import ControlClient

        with ControlClient(self.rpc_address, timeout=timeout) as client:
            return client.publish(data)

    def _ask(self, what: str) -> Any:
        from potluck.rpc.client import ControlClient
        from potluck.rpc.jsonify import message_to_dict

        with ControlClient(self.rpc_address, timeout=5.0) as client:
            return message_to_dict(getattr(client, what)())

    def multiaddr(self) -> str:
        """An address other local nodes can bootstrap from (loopback, with /p2p/)."""
        return next(a for a in self.status()["addrs"] if a.startswith("/ip4/127.0.0.1/"))

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill_group(self) -> None:
        """SIGKILL the node and every process it started (p2pd): a machine losing power."""
        if self.proc is not None and self.proc.returncode is None:  # not yet reaped: the pid is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 10.0, *, signalled: bool = False) -> int | None:
        """SIGTERM (once: a second one means "hurry") and wait; SIGKILL the group after ``timeout``."""
        if self.proc is None:
            return None
        if not signalled:
            self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            return None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class LocalSwarm:
    """N nodes on 127.0.0.1 with free ports; the first one is everybody's initial peer."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        run: str = "default",
        record_ttl: float = 30.0,
        extra_args: Sequence[str] = (),
    ):
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="potluck-swarm-")) if root is None else root
        self.run, self.record_ttl, self.extra_args = run, record_ttl, list(extra_args)
        self.nodes: list[LocalNode] = []

    def node_args(
        self, initial_peers: Sequence[str] = (), extra_args: Sequence[str] | None = None
    ) -> list[str]:
        args = [
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--rpc-listen",
            "127.0.0.1:0",
            "--run",
            self.run,
            "--record-ttl",
            str(self.record_ttl),
            *(self.extra_args if extra_args is None else extra_args),
        ]
        return [*args, "--initial-peers", *initial_peers] if initial_peers else args

    @classmethod
    def for_run(cls, root: Path, run_id: str, manifest_path: Path, record_ttl: float = 6.0) -> LocalSwarm:
        """Nodes that serve the run whose manifest (and genesis beside it) is at ``manifest_path``."""
        return cls(root, run=run_id, record_ttl=record_ttl, extra_args=["--manifest", str(manifest_path)])

    def add_node(
        self,
        initial_peers: Sequence[str] | None = None,
        name: str | None = None,
        extra_args: Sequence[str] | None = None,
        module: str = "potluck",
    ) -> LocalNode:
        """Start one more node (bootstrapping from the first); ``extra_args`` replaces the swarm's."""
        if initial_peers is None:
            initial_peers = [self.nodes[0].multiaddr()] if self.nodes else []
        node = LocalNode(
            self.root / (name or f"node{len(self.nodes)}"),
            self.node_args(initial_peers, extra_args),
            module=module,
        )
        self.nodes.append(node)
        return node.start()

    def add_contributor(self, name: str, *args: str, manifest: Path | None = None) -> LocalNode:
        """Start a `potluck join` process of this swarm's run, bootstrapping from the first node;
        ``args``: its other options (--shard, --local-steps, --client-mode, ...). It joins by run id
        (a pre-trained genesis then comes from its peers), or with ``manifest`` by that file and the
        genesis beside it."""
        run = ["--run", self.run] if manifest is None else ["--manifest", str(manifest)]
        node = LocalNode(
            self.root / name,
            [self.nodes[0].multiaddr(), *run, "--listen", "/ip4/127.0.0.1/tcp/0",
             "--record-ttl", str(self.record_ttl), *args],
            command="join",
        )  # fmt: skip
        self.nodes.append(node)
        return node.start()

    def start(self, n: int, timeout: float = 60.0) -> LocalSwarm:
        """Start n nodes: the bootstrap node first, then the others in parallel."""
        self.add_node().wait_ready(timeout)
        rest = [self.add_node() for _ in range(n - 1)]
        for node in rest:
            node.wait_ready(timeout)
        return self

    def connected(self, n: int, timeout: float = 60.0) -> LocalSwarm:
        """:meth:`start` ``n`` nodes and wait until each sees the others."""
        self.start(n, timeout)
        self.wait_all_see(n - 1, timeout)
        return self

    def wait_all_see(
        self, expected_peers: int, timeout: float = 60.0, nodes: Sequence[LocalNode] | None = None
    ) -> None:
        nodes = list(nodes or self.nodes)
        wait_for(
            lambda: all(n.status()["peers"] == expected_peers for n in nodes),
            timeout,
            f"every node to see {expected_peers} peers",
        )

    def stop(self) -> list[int | None]:
        """SIGTERM every node at once, then collect exit codes (0 = clean shutdown)."""
        for node in self.nodes:
            node.signal(signal.SIGTERM)
        codes = [node.stop(signalled=True) for node in self.nodes]
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
        return codes

    def __enter__(self) -> LocalSwarm:
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.kill_group()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (RuntimeError, AssertionError):
            raise
        except Exception as e:  # a node still starting: keep polling
            last_error = e
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({last_error})" if last_error else "")
    )


def next_collecting_round(manifest: Manifest, margin: float = 0.3) -> int:
    """Wait until ``margin`` seconds into the next round's collecting phase; return that round."""
    r = schedule.round_at(manifest, time.time()) + 1
    while time.time() < schedule.round_start(manifest, r) + margin:
        time.sleep(0.05)
    return r
