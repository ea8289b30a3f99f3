"""potluck.observe.dashboard: the contributors table and /api/state, from a history and a status."""

from __future__ import annotations

from types import SimpleNamespace

from potluck.observe.dashboard import ASSETS, contributors, routes, state
from potluck.v1 import control_pb2

A, B, C = "aa" * 32, "bb" * 32, "cc" * 32


def test_contributors_count_rounds_and_carry_bans_and_probation():
    log = [{"round": 0, "contributors": [A, B]}, {"round": 2, "contributors": [A]}]
    status = {"defence": {"bans": [{"node_id": B, "reason": "equivocation"}], "probation": [
        {"node_id": C, "rounds_left": 2}]}}  # fmt: skip
    rows = {r["node_id"]: r for r in contributors(log, status)}
    assert (rows[A]["rounds"], rows[A]["last_round"], rows[A]["ban"]) == (2, 2, "")
    assert (rows[B]["rounds"], rows[B]["ban"]) == (1, "equivocation")
    # on probation but not yet in a commit: listed, with no rounds
    assert (rows[C]["rounds"], rows[C]["probation_rounds_left"]) == (0, 2)
    assert [r["node_id"] for r in contributors(log, status)] == [A, B, C]  # most rounds first


def test_the_page_and_its_assets_ship_in_the_package_and_a_starting_node_answers_503():
    node = SimpleNamespace(history=None, list_peers=lambda: control_pb2.ListPeersResponse())
    pages = routes(node, lambda: None)
    for path in ASSETS:
        reply = pages[path]()
        assert reply.status == 200 and reply.body
    html = pages["/"]().body.decode()
    assert "http://" not in html and "https://" not in html  # no CDN, nothing fetched elsewhere
    assert pages["/api/state"]().status == 503
    assert state(node, None) == {"starting": True}
