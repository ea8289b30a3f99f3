"""Real `potluck run` processes on 127.0.0.1: discovery, forged records, crashes, restarts, shutdown."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from potluck.localswarm import LocalNode, LocalSwarm, wait_for
from tests.support.attacks import forge_peer_records, store_nested_value
from tests.support.cli import potluck
from tests.support.spawned import run_spawned
from tests.support.swarm import connected_swarm

pytestmark = pytest.mark.multiprocess
TTL = 6.0  # short peer-record lifetime so expiry tests stay quick


cli = functools.partial(potluck, check=True)  # a failing command fails the test, unless check=False


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def node_ids(node: LocalNode) -> set[str]:
    return {p["node_id"] for p in node.peers()}


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    with connected_swarm(tmp_path_factory.mktemp("potluck-swarm-"), 3, record_ttl=TTL) as swarm:
        yield swarm


def test_three_nodes_discover_each_other(swarm):
    ids = [json.loads(cli("id", "--data-dir", str(n.data_dir), "--json").stdout) for n in swarm.nodes]
    for node, own in zip(swarm.nodes, ids, strict=True):
        status = json.loads(cli("status", "--data-dir", str(node.data_dir), "--json").stdout)
        assert status["peers"] == 2
        # p2pd runs with the node key: the peer id it reports is the one `potluck id` derives
        assert (status["node_id"], status["peer_id"]) == (own["node_id"], own["peer_id"])
        assert status["run"] == "default" and status["uptime_s"] > 0
        assert status["addrs"] and all(a.endswith(f"/p2p/{own['peer_id']}") for a in status["addrs"])
        peers = json.loads(cli("peers", "--data-dir", str(node.data_dir), "--json").stdout)
        assert {p["node_id"] for p in peers} == {i["node_id"] for i in ids} - {own["node_id"]}
        for peer in peers:
            assert peer["addrs"] and peer["peer_id"] in peer["addrs"][0]
            assert time.time() - TTL - 5 < peer["last_seen"] <= time.time() + 1
    table = cli("status", "--data-dir", str(swarm.nodes[0].data_dir)).stdout
    assert "peers" in table and ids[0]["peer_id"] in table
    assert ids[1]["node_id"][:16] in cli("peers", "--data-dir", str(swarm.nodes[0].data_dir)).stdout


def _rejected(swarm: LocalSwarm) -> dict[str, int]:
    totals: dict[str, int] = {}
    for node in swarm.nodes:
        for reason, count in node.status()["rejected_records"].items():
            totals[reason] = totals.get(reason, 0) + count
    return totals


def test_forged_peer_records_are_rejected_and_counted(swarm):
    from potluck.identity import NodeIdentity

    victim = swarm.nodes[1].status()
    mallory = NodeIdentity.generate()
    before = _rejected(swarm)
    assert run_spawned(
        forge_peer_records, swarm.nodes[0].multiaddr(), bytes.fromhex(victim["node_id"]), victim["peer_id"],
        mallory.to_pem(), TTL,
    )  # fmt: skip

    def all_counted():
        now = _rejected(swarm)
        return all(
            now.get(r, 0) > before.get(r, 0) for r in ("bad_signature", "unsigned", "oversized", "replayed")
        )

    wait_for(all_counted, 20, "every forgery to be counted")
    mallory_id = mallory.public_key.hex()
    for node in swarm.nodes:
        peers = {p["node_id"]: p for p in node.peers()}
        if node is not swarm.nodes[1]:  # nobody took the forged record of the victim
            assert peers[victim["node_id"]]["sequence"] < 10**18
        if mallory_id in peers:  # the genuine record is accepted; the replay never replaces it
            assert peers[mallory_id]["sequence"] == 2000
    assert "rejected" in cli("status", "--data-dir", str(swarm.nodes[0].data_dir)).stdout


def test_deeply_nested_payload_does_not_crash_the_dht(swarm):
    target = swarm.nodes[2]
    status = target.status()
    outcome = run_spawned(store_nested_value, swarm.nodes[0].multiaddr(), status["peer_id"], 200)
    assert outcome != "stored"
    after = target.status()  # the DHT serves from a thread of the daemon: this answer is the daemon alive
    assert after["rejected_records"]["too_deep"] > status["rejected_records"]["too_deep"]
    assert after["dht_restarts"] == status["dht_restarts"]
    assert psutil.Process(target.pid).is_running()


def test_sigkilled_node_leaves_peer_lists_after_its_ttl(swarm):
    doomed = swarm.add_node(name="doomed").wait_ready()
    doomed_id = doomed.status()["node_id"]
    wait_for(lambda: all(doomed_id in node_ids(n) for n in swarm.nodes[:3]), 30, "the new node to be seen")
    doomed.kill_group()
    killed_at = time.monotonic()
    wait_for(
        lambda: all(doomed_id not in node_ids(n) for n in swarm.nodes[:3]),
        TTL + 10,
        "the dead node to expire",
    )
    assert time.monotonic() - killed_at <= TTL + 10
    swarm.nodes.remove(doomed)


def test_graceful_restart_keeps_identity_and_leaves_nothing_behind(swarm):
    node = swarm.add_node(name="restarter").wait_ready()
    first = node.status()
    children = descendants(node.pid)
    assert any(p.name() == "p2pd" for p in children)
    socket_dirs = {Path(p) for p in Path("/tmp").glob("potluck-p2p-*")}
    t0 = time.monotonic()
    node.signal(signal.SIGTERM)
    assert node.proc.wait(10) == 0
    assert time.monotonic() - t0 < 5.0, "shutdown must take at most 5 s"
    wait_for(
        lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children),
        3,
        "p2pd to exit",
    )
    assert not (node.data_dir / "api").exists()
    assert {Path(p) for p in Path("/tmp").glob("potluck-p2p-*")} < socket_dirs or not socket_dirs

    node.start().wait_ready()
    second = node.status()
    assert (second["node_id"], second["peer_id"]) == (first["node_id"], first["peer_id"])
    wait_for(lambda: first["node_id"] in node_ids(swarm.nodes[0]), 20, "the restarted node to be seen again")
    node.stop()
    swarm.nodes.remove(node)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_initial_peer_is_retried_until_it_comes_up(tmp_path):
    late_dir = tmp_path / "late"
    late_id = json.loads(cli("id", "--data-dir", str(late_dir), "--json").stdout)
    port = _free_port()
    late_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{late_id['peer_id']}"
    swarm = LocalSwarm(tmp_path, record_ttl=TTL)
    with swarm:
        early = swarm.add_node(initial_peers=[late_addr], name="early").wait_ready()
        wait_for(lambda: early.status()["bootstrap"]["attempts"] >= 2, 20, "a second bootstrap attempt")
        boot = early.status()["bootstrap"]
        assert boot["state"] == "retrying" and boot["last_error"]
        assert early.proc.poll() is None
        # one line that names the address and what to check; the retries and libp2p's words stay quiet
        assert boot["last_error"] == f"{late_addr}: connection refused (nothing listens there)"
        warnings = [line for line in early.log_path.read_text().splitlines() if " WARN " in line]
        assert len(warnings) == 1, warnings
        assert late_addr in warnings[0] and "check the address" in warnings[0]
        assert "ControlFailure" not in early.log_path.read_text()
        late = LocalNode(
            late_dir,
            [
                "--listen",
                f"/ip4/127.0.0.1/tcp/{port}",
                "--rpc-listen",
                "127.0.0.1:0",
                "--record-ttl",
                str(TTL),
            ],
        )
        swarm.nodes.append(late.start().wait_ready())
        wait_for(
            lambda: early.status()["bootstrap"]["state"] == "connected",
            40,
            "the retry to reach the late peer",
        )
        swarm.wait_all_see(1, timeout=30)
        assert swarm.stop() == [0, 0]


def test_a_port_another_node_listens_on_is_refused_in_one_line(swarm, tmp_path):
    taken = swarm.nodes[0].multiaddr().split("/p2p/")[0]  # /ip4/127.0.0.1/tcp/N
    port = taken.rsplit("/", 1)[1]
    for listen in (taken, f"/ip4/0.0.0.0/tcp/{port}"):
        proc = cli("run", "--data-dir", str(tmp_path / "second"), "--listen", listen,
                   "--rpc-listen", "127.0.0.1:0", check=False)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"potluck run: cannot listen on --listen {listen}: address already in use (another node?)"
        ]
    assert not (tmp_path / "second" / "api").exists()


def test_a_node_is_its_python_and_p2pd_and_nothing_else(swarm):
    for node in swarm.nodes:
        names = [p.name() for p in descendants(node.pid)]
        # the DHT is a thread (potluck.swarm.dhtthread); no torch_shm_manager (potluck.swarm.forks),
        # no averager before an all-reduce needs one
        assert names == ["p2pd"], names


def test_nothing_of_ours_is_left_after_the_swarm_stops(swarm):
    pids = [swarm.nodes[i].pid for i in range(3)]
    children = [c for pid in pids for c in descendants(pid)]
    assert sum(c.name() == "p2pd" for c in children) == 3
    assert swarm.stop() == [0, 0, 0]
    wait_for(
        lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children),
        5,
        "every p2pd to exit",
    )
    assert not any(
        os.path.exists(f"/proc/{pid}") and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        for pid in pids
    )
