"""potluck.rpc.replies: the control API's replies, built from a node's parts (stand-ins here)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from potluck.engine import RoundStatus
from potluck.exchange.download import SyncProgress, SyncStats
from potluck.identity import NodeIdentity
from potluck.manifest import create_manifest
from potluck.rounds import schedule
from potluck.rpc import replies
from potluck.swarm.host import BootstrapState
from potluck.swarm.membership import LocalState
from potluck.swarm.traffic import KINDS, Traffic
from potluck.swarm.validator import RejectionCounters


def _node(engine=None) -> SimpleNamespace:
    return SimpleNamespace(
        run="default",
        started_at=0.0,
        local=LocalState(role="keeper", agent="potluck/test"),
        rejections=RejectionCounters(),
        identity=NodeIdentity.generate(),
        host=SimpleNamespace(
            bootstrap=BootstrapState(initial_peers=[]),
            listen=["/ip4/127.0.0.1/tcp/0"],
            addrs=[],
            dht_restarts=0,
            traffic=Traffic(),
        ),
        membership=SimpleNamespace(peers=lambda: [], ttl_s=30.0),
        exchange=None,
        modules=None,
        state_service=None,
        engine=engine,
        defence=None,
        rpc_address="127.0.0.1:7450",
    )


def test_a_node_without_rounds_reports_none():
    reply = replies.status(_node())
    assert (reply.phase, reply.committed_round, reply.collecting_deadline) == ("idle", -1, 0.0)
    assert not reply.HasField("aggregation") and reply.rpc_address == "127.0.0.1:7450"
    assert replies.list_updates(_node()).updates == [] and replies.list_peers(_node()).peers == []


def test_the_status_carries_the_traffic_by_kind():
    node = _node()
    node.host.traffic.counters.add("records", sent=120, received=30)
    node.host.traffic.sample()  # no p2pd to watch: the kernel's counters are unavailable, never a crash
    traffic = replies.status(node).traffic
    assert traffic.kernel.startswith("unavailable") and not traffic.HasField("total")
    assert set(traffic.kinds) == set(KINDS)
    assert (traffic.kinds["records"].sent, traffic.kinds["records"].recv) == (120, 30)


def test_the_status_carries_the_download_under_way_and_every_byte_synced():
    node = _node()
    progress = SyncProgress("ab" * 32, 1000.0)
    progress.size("w", 300)
    progress.size("w", 300)  # named again (pass 2 after pass 1): counted once
    progress.size("b", 100)
    progress.bytes = 250
    node.state_service = SimpleNamespace(
        progress=progress, stats=SyncStats(bytes_downloaded=900, tensors_reused=2)
    )
    sync = replies.status(node).sync
    assert (sync.version, sync.started, sync.bytes, sync.target_bytes) == ("ab" * 32, 1000.0, 250, 400)
    assert (sync.downloaded_bytes, sync.tensors_reused) == (900, 2)
    node.state_service.progress = SyncProgress()  # done: nothing under way, the total stays
    sync = replies.status(node).sync
    assert (sync.version, sync.bytes, sync.target_bytes, sync.downloaded_bytes) == ("", 0, 0, 900)


def test_the_status_says_when_collecting_stops_a_quarter_round_before_the_end():
    manifest = create_manifest(
        NodeIdentity.generate(), "toy", "ab" * 32, round_seconds=40.0, start_time=1000.0
    )
    r = 3
    status = RoundStatus(round=r, phase="collecting", deadline=schedule.deadline(manifest, r),
                         closes_at=schedule.aggregation_start(manifest, r), placement="gathered",
                         placement_reason="auto: cheapest (per node: ...)", close_reason="every declared ...",
                         last_phases={"entries": 0.2, "merge": 0.01, "commit": 0.05})  # fmt: skip
    status.convicted["cd" * 32] = (2, "ef" * 32)
    engine = SimpleNamespace(
        run_id=manifest.run_id, status=status, version="12" * 32, committed_round=r - 1,
        placement="gathered", manifest=manifest, waiting_for=2,
    )  # fmt: skip
    reply = replies.status(_node(engine))
    assert reply.deadline == 1000.0 + 4 * 40.0
    assert reply.collecting_deadline == pytest.approx(reply.deadline - 10.0)  # the last quarter aggregates
    assert (reply.round, reply.phase, reply.committed_round) == (r, "collecting", r - 1)
    assert reply.aggregation.strategy == manifest.strategy and reply.aggregation.placement == "gathered"
    assert reply.aggregation.placement_policy == "auto" and reply.aggregation.placement_reason.startswith(
        "auto"
    )
    assert [(c.node_id, c.round) for c in reply.aggregation.convicted] == [("cd" * 32, 2)]
    agg = reply.aggregation
    assert (agg.pacing, agg.waiting_for, agg.close_reason) == ("clock", 2, "every declared ...")
    assert dict(agg.last_phases) == {"entries": 0.2, "merge": 0.01, "commit": 0.05}
    status.committed({"entries": 0.3, "merge": 0.5, "commit": 0.4})
    latency = replies.status(_node(engine)).aggregation.commit_seconds
    assert (latency.count, latency.sum) == (1, pytest.approx(1.2)) and list(latency.bounds)[:3] == [
        0.25,
        0.5,
        1.0,
    ]
    assert list(latency.counts)[:4] == [0, 0, 0, 1]
