"""The dashboard: a page, its script and style (static/, shipped in the package: no CDN, no fetch
elsewhere) and ``/api/state``, the JSON the page polls: the GetStatus and ListPeers replies, the
node's committed history (the metric curve, the rounds timeline) and the contributors it names
(observe/contributors.py: rounds, bytes, samples and merge weight of each author's merged updates).

Read-only, and nothing secret: node ids, addresses and counts, as `potluck status` shows them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from potluck.manifest import Manifest
from potluck.observe.contributors import Contributors
from potluck.observe.http import Handler, Response, text
from potluck.rpc.jsonify import message_to_dict
from potluck.store.history import History
from potluck.store.updates import UpdateStore
from potluck.v1 import control_pb2

HISTORY_ROUNDS = 300  # the newest rounds the page plots: a long run's page stays small
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


class Pages(Protocol):
    data_dir: Path
    history: History | None
    manifest: Manifest | None

    def list_peers(self) -> control_pb2.ListPeersResponse: ...


class State:
    """``/api/state`` of one node; keeps the contributors table's reads between polls."""

    def __init__(self, node: Pages) -> None:
        self._node = node
        self._contributors: Contributors | None = None

    def __call__(self, status: dict[str, Any] | None) -> dict[str, Any]:
        if status is None:
            return {"starting": True}
        node = self._node
        log = node.history.log() if node.history is not None else []
        window = log[-HISTORY_ROUNDS:]
        rounds = [
            {k: e[k] for k in ("round", "version", "time", "accuracy", "updates", "signatures")}
            | {"contributors": len(e["contributors"])}
            for e in window
        ]
        if self._contributors is None and node.history is not None:
            updates = UpdateStore(node.data_dir / "updates")
            self._contributors = Contributors(node.history, updates, node.manifest)
        table = (
            self._contributors.table(window, log, status)
            if self._contributors is not None
            else {"rows": [], "not_held": 0, "pending": 0}
        )
        return {
            "starting": False,
            "status": status,
            "peers": message_to_dict(node.list_peers())["peers"],
            "rounds": rounds,
            "contributors": table["rows"],
            "contributions": {"not_held": table["not_held"], "pending": table["pending"]},
        }


def _asset(name: str, content_type: str) -> Handler:
    body = resources.files("potluck.observe").joinpath("static", name).read_bytes()
    return lambda: Response(200, content_type, body)


def routes(node: Pages, status: Callable[[], dict[str, Any] | None]) -> dict[str, Handler]:
    state = State(node)

    def api() -> Response:
        s = state(status())
        if s["starting"]:
            return text(503, "the node is starting")
        return Response(200, "application/json", json.dumps(s).encode())

    pages = {path: _asset(name, kind) for path, (name, kind) in ASSETS.items()}
    return pages | {"/index.html": pages["/"], "/api/state": api}
