"""potluck.swarm.traffic: kinds, counters shared with forked processes, the kernel totals across
sockets that close, and the recent rates (the kernel is stood in for; tests/swarm/test_traffic_nodes.py
runs real nodes)."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from potluck.swarm import sockdiag, traffic
from potluck.swarm.traffic import KINDS, Traffic, TrafficCounters


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("potluck/default/peers", "records"),
        ("potluck/ab/updates/3", "announcements"),
        ("potluck/ab/round/3/attempt/0/entries", "entries"),
        ("potluck/ab/commits/3", "commits"),
        ("potluck/ab/evidence/3", "defence"),
        ("potluck/ab/faults", "aggregation"),
        ("potluck/ab/round/3/declared", "declarations"),
        ("somebody/else", "other"),
    ],
)
def test_a_key_names_its_kind(key, kind):
    assert traffic.kind_of_key(key) == kind


def test_a_handler_names_its_kind_and_a_dht_call_takes_its_callers():
    assert traffic.kind_of_handler("potluck.v1.GetUpdate") == "update_transfer"
    assert traffic.kind_of_handler("potluck.v1.GetTensor") == "sync"
    assert traffic.kind_of_handler("ab::CanonicalAverager.rpc_aggregate_part") == "aggregation"
    assert traffic.kind_of_handler("DHTProtocol.rpc_find") == "dht_upkeep"
    with traffic.calling("commits"):
        assert traffic.kind_of_handler("DHTProtocol.rpc_store") == "commits"
        held = traffic._call_kind.get()
    assert traffic.kind_of_handler("DHTProtocol.rpc_find") == "dht_upkeep"
    assert held == []  # a task that kept the call's context no longer counts as the call


def test_a_pushed_record_counts_as_its_keys_kind():
    from potluck.v1 import exchange_pb2

    for key, kind in [("potluck/ab/commits/3", "commits"), ("potluck/ab/round/3/declared", "declarations")]:
        post = exchange_pb2.Post(key=key, subkey=b"s", value=b"v", expiration=1.0)
        assert traffic.kind_of_call(traffic.POST_HANDLER, post) == kind
        assert traffic.served_kind(traffic.POST_HANDLER, post) == kind
    assert traffic.kind_of_call("potluck.v1.GetUpdate", None) == "update_transfer"


def _add_in_child(counters: TrafficCounters) -> None:
    counters.add("aggregation", sent=700, received=300)


def test_counts_of_forked_processes_add_up_in_the_parent():
    counters = TrafficCounters()
    counters.add("records", sent=10, received=20)
    children = [mp.get_context("fork").Process(target=_add_in_child, args=(counters,)) for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(10)
    totals = counters.totals()
    assert totals["records"] == (10, 20) and totals["aggregation"] == (2100, 900)
    assert set(totals) == set(KINDS)


def test_the_kernel_total_keeps_the_bytes_of_closed_sockets(monkeypatch):
    live = {1: sockdiag.SocketBytes(1, 100, 200), 2: sockdiag.SocketBytes(2, 10, 20)}
    monkeypatch.setattr(sockdiag, "socket_inodes", lambda pid: set(live))
    monkeypatch.setattr(sockdiag, "tcp_bytes", lambda inodes: {i: live[i] for i in inodes})
    t = Traffic()
    t.watch(1234)
    t.counters.add("records", sent=50, received=60)
    first = t.sample(now=0.0)
    assert first["total"] == (110, 220) and first["transport"] == (60, 160)
    del live[1]  # closed: its last-seen bytes stay in the total
    live[2] = sockdiag.SocketBytes(2, 30, 40)
    live[3] = sockdiag.SocketBytes(3, 5, 5)
    second = t.sample(now=4.0)
    assert second["total"] == (135, 245)
    window, rates = t.rates()
    assert window == 4.0 and rates["total"] == (25 / 4, 25 / 4)
    status = t.status()
    assert status["kernel"] == "ok" and status["total"]["sent"] == 135 and "transport" in status["kinds"]
    # bytes of the direct sync channel are on the node's own sockets: in the total, not taken from p2pd's
    t.counters.add(traffic.DIRECT, sent=1000, received=7)
    third = t.sample(now=5.0)
    assert third["total"] == (1135, 252) and third["transport"] == second["transport"]


def test_without_netlink_the_kernel_is_unavailable_and_the_kinds_still_count(monkeypatch):
    def refuse(inodes):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(sockdiag, "socket_inodes", lambda pid: {1})
    monkeypatch.setattr(sockdiag, "tcp_bytes", refuse)
    t = Traffic()
    t.watch(1234)
    t.counters.add("sync", received=5)
    sample = t.sample(now=0.0)
    assert "total" not in sample and sample["sync"] == (0, 5)
    assert t.status()["kernel"].startswith("unavailable: PermissionError")
    assert t.status()["total"] is None


def test_a_request_of_another_node_takes_the_kind_of_a_key_this_node_used():
    from hivemind.dht.routing import DHTID
    from hivemind.proto import dht_pb2

    traffic._remember("potluck/ab/updates/3", "announcements")
    known = dht_pb2.FindRequest(keys=[DHTID.generate(source="potluck/ab/updates/3").to_bytes()])
    unknown = dht_pb2.FindRequest(keys=[DHTID.generate(source="potluck/ab/updates/4").to_bytes()])
    assert traffic.served_kind("DHTProtocol.rpc_find", known) == "announcements"
    assert traffic.served_kind("DHTProtocol.rpc_find", unknown) == "dht_upkeep"
    assert traffic.served_kind("DHTProtocol.rpc_ping", dht_pb2.PingRequest()) == "dht_upkeep"
    assert traffic.served_kind("potluck.v1.GetSlice", known) == "aggregation"
