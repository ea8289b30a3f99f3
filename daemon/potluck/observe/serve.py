"""Starting ``/metrics`` and the dashboard beside a node: bound before the node starts (a busy port
fails fast, like the control API), the dashboard's URL written to ``<data-dir>/dashboard`` once the
node runs (`potluck dashboard` reads it), everything stopped with the node."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from potluck.manifest import Manifest
from potluck.observe import dashboard, metrics
from potluck.observe.http import HttpServer, Response
from potluck.rpc.jsonify import message_to_dict
from potluck.store.history import History
from potluck.swarm.membership import Membership
from potluck.v1 import control_pb2

DASHBOARD_FILE = "dashboard"
OFF = "off"


class Observed(Protocol):
    """What the pages read of a node (potluck.node.Node has it)."""

    data_dir: Path
    membership: Membership | None
    history: History | None
    manifest: Manifest | None

    def status(self) -> control_pb2.GetStatusResponse: ...
    def list_peers(self) -> control_pb2.ListPeersResponse: ...


def status_of(node: Observed) -> dict[str, Any] | None:
    """The GetStatus reply as a dict; None while the node is starting (no membership yet)."""
    return message_to_dict(node.status()) if node.membership is not None else None


class Observers:
    """The HTTP servers a node was asked for: ``metrics_listen``/``dashboard_listen`` HOST:PORT, or "off"."""

    def __init__(self, node: Observed, metrics_listen: str, dashboard_listen: str) -> None:
        self._node = node
        self.metrics: HttpServer | None = None
        self.dashboard: HttpServer | None = None
        if metrics_listen != OFF:
            self.metrics = HttpServer(metrics_listen, {"/metrics": self._metrics}, flag="--metrics-listen")
        if dashboard_listen != OFF:
            self.dashboard = HttpServer(
                dashboard_listen, dashboard.routes(node, lambda: status_of(node)), flag="--dashboard-listen"
            )
        self._file: Path | None = None

    def _metrics(self) -> Response:
        return Response(200, metrics.CONTENT_TYPE, metrics.render(lambda: status_of(self._node)))

    async def start(self) -> None:
        try:
            for server in (self.metrics, self.dashboard):
                if server is not None:
                    await server.start()
        except BaseException:  # the other one may be bound already
            await self.stop()
            raise

    def publish(self) -> None:
        """Once the node runs: write the dashboard's URL where `potluck dashboard` looks."""
        if self.dashboard is not None:
            path = self._node.data_dir / DASHBOARD_FILE
            tmp = path.with_name(f".{DASHBOARD_FILE}.{os.getpid()}.tmp")
            tmp.write_text(f"http://{self.dashboard.address}/\n")
            os.replace(tmp, path)
            self._file = path

    def urls(self) -> list[str]:
        return [
            f"{what} on http://{server.address}{page}"
            for what, server, page in (
                ("metrics", self.metrics, "/metrics"),
                ("dashboard", self.dashboard, "/"),
            )
            if server is not None and server.address
        ]

    async def stop(self) -> None:
        if self._file is not None:
            self._file.unlink(missing_ok=True)
        for server in (self.metrics, self.dashboard):
            if server is not None:
                await server.stop()


def read_dashboard_url(data_dir: Path) -> str | None:
    try:
        return (data_dir / DASHBOARD_FILE).read_text().strip() or None
    except OSError:
        return None
