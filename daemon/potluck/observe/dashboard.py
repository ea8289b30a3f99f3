"""The dashboard: a page, its script and style (static/, shipped in the package: no CDN, no fetch
elsewhere) and ``/api/state``, the JSON the page polls: the GetStatus and ListPeers replies, the
node's committed history (the metric curve, the rounds timeline) and the contributors it names.

Read-only, and nothing secret: node ids, addresses and counts, as `potluck status` shows them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol

from potluck.observe.http import Handler, Response, text
from potluck.rpc.jsonify import message_to_dict
from potluck.store.history import History
from potluck.v1 import control_pb2

HISTORY_ROUNDS = 300  # the newest rounds the page plots: a long run's page stays small
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


class Pages(Protocol):
    history: History | None

    def list_peers(self) -> control_pb2.ListPeersResponse: ...


def contributors(log: list[dict[str, Any]], status: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per author the history names: rounds contributed, the last one, ban and probation."""
    rows: dict[str, dict[str, Any]] = {}
    for entry in log:
        for node in entry["contributors"]:
            row = rows.setdefault(node, {"node_id": node, "rounds": 0, "last_round": -1})
            row["rounds"] += 1
            row["last_round"] = max(row["last_round"], entry["round"])
    defence = status.get("defence") or {}
    bans = {b["node_id"]: b for b in defence.get("bans", [])}
    probation = {p["node_id"]: p["rounds_left"] for p in defence.get("probation", [])}
    for node in bans.keys() | probation.keys():
        rows.setdefault(node, {"node_id": node, "rounds": 0, "last_round": -1})
    for node, row in rows.items():
        row["ban"] = bans[node]["reason"] if node in bans else ""
        row["probation_rounds_left"] = probation.get(node, 0)
    return sorted(rows.values(), key=lambda r: (-r["rounds"], r["node_id"]))


def state(node: Pages, status: dict[str, Any] | None) -> dict[str, Any]:
    if status is None:
        return {"starting": True}
    log = node.history.log()[-HISTORY_ROUNDS:] if node.history is not None else []
    rounds = [
        {k: e[k] for k in ("round", "version", "time", "accuracy", "updates", "signatures")}
        | {"contributors": len(e["contributors"])}
        for e in log
    ]
    return {
        "starting": False,
        "status": status,
        "peers": message_to_dict(node.list_peers())["peers"],
        "rounds": rounds,
        "contributors": contributors(log, status),
    }


def _asset(name: str, content_type: str) -> Handler:
    body = resources.files("potluck.observe").joinpath("static", name).read_bytes()
    return lambda: Response(200, content_type, body)


def routes(node: Pages, status: Callable[[], dict[str, Any] | None]) -> dict[str, Handler]:
    def api() -> Response:
        s = state(node, status())
        if s["starting"]:
            return text(503, "the node is starting")
        return Response(200, "application/json", json.dumps(s).encode())

    pages = {path: _asset(name, kind) for path, (name, kind) in ASSETS.items()}
    return pages | {"/index.html": pages["/"], "/api/state": api}
