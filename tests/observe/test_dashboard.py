"""potluck.observe.dashboard: /api/state and the page's assets (the contributors table's numbers:
test_contributors.py)."""

from __future__ import annotations

from types import SimpleNamespace

from potluck.observe.dashboard import ASSETS, State, routes
from potluck.store.history import HISTORY_FILE, History
from potluck.v1 import control_pb2
from tests.vcs.conftest import build_history

A, B, C = "aa" * 32, "bb" * 32, "cc" * 32


def test_the_state_carries_the_history_and_the_contributors_and_a_banned_node_without_rounds(tmp_path):
    built = build_history(tmp_path, rounds=2)
    status = {"defence": {"bans": [{"node_id": A, "reason": "equivocation"}], "probation": [
        {"node_id": C, "rounds_left": 2}]}}  # fmt: skip
    with History(built.data_dir / HISTORY_FILE, readonly=True) as history:
        node = SimpleNamespace(data_dir=built.data_dir, history=history, manifest=built.manifest,
                               list_peers=lambda: control_pb2.ListPeersResponse())  # fmt: skip
        s = State(node)(status)
    assert [r["round"] for r in s["rounds"]] == [0, 1] and s["rounds"][0]["contributors"] == 2
    rows = {r["node_id"]: r for r in s["contributors"]}
    assert {a.node_id for a in built.authors} | {A, C} == set(rows)
    assert all(rows[a.node_id]["rounds"] == 2 and rows[a.node_id]["bytes"] > 0 for a in built.authors)
    # banned, or on probation, but in no commit: listed, with no rounds and no bytes
    assert (rows[A]["rounds"], rows[A]["bytes"], rows[A]["ban"]) == (0, 0, "equivocation")
    assert (rows[C]["rounds"], rows[C]["probation_rounds_left"]) == (0, 2)
    assert [r["node_id"] for r in s["contributors"]][:2] == sorted(a.node_id for a in built.authors)
    assert s["contributions"] == {"not_held": 0, "pending": 0}


def test_the_page_and_its_assets_ship_in_the_package_and_a_starting_node_answers_503():
    node = SimpleNamespace(
        data_dir=None, history=None, manifest=None, list_peers=lambda: control_pb2.ListPeersResponse()
    )
    pages = routes(node, lambda: None)
    for path in ASSETS:
        reply = pages[path]()
        assert reply.status == 200 and reply.body
    html = pages["/"]().body.decode()
    assert "http://" not in html and "https://" not in html  # no CDN, nothing fetched elsewhere
    assert pages["/api/state"]().status == 503
    assert State(node)(None) == {"starting": True}
