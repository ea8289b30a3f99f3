"""Traffic by kind on real nodes: the kernel's count of p2pd's sockets, potluck's share by kind, an
update of known size moving the update_transfer counters of its sender and its fetcher, and an
all-reduce in hivemind's averager processes counted as aggregation."""

from __future__ import annotations

import pytest

from potluck.localswarm import wait_for
from potluck.swarm.traffic import KINDS
from tests.exchange.test_exchange import models, update  # noqa: F401 (a fixture)
from tests.support.swarm import connected_swarm

pytestmark = pytest.mark.multiprocess
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def _traffic(node) -> dict:
    return node.status()["traffic"]


def _counted(t: dict, direction: str) -> int:
    return sum(t["kinds"][k][direction] for k in KINDS)


def test_traffic_is_counted_by_kind_and_an_update_moves_update_transfer(models, tmp_path):  # noqa: F811
    with connected_swarm(tmp_path, 2, extra_args=["--model", str(models / "base.safetensors")]) as swarm:
        a, b = swarm.nodes
        first = _traffic(a)
        if first["kernel"] != "ok":
            pytest.skip(f"the kernel's counters are unavailable here: {first['kernel']}")
        # records move from the start: each node publishes its peer record and reads everyone's
        wait_for(lambda: all(_traffic(n)["kinds"]["records"]["recv"] > 0 for n in (a, b)), 30, "records")
        for node in (a, b):  # the kernel sees at least what potluck counted (read while nothing is in flight)
            wait_for(
                lambda n=node: all(
                    (t := _traffic(n))["total"][d] >= _counted(t, d) > 0 for d in ("sent", "recv")
                ),
                30,
                "kernel totals >= counted bytes",
            )
        sent0 = _traffic(a)["kinds"]["update_transfer"]["sent"]
        recv0 = _traffic(b)["kinds"]["update_transfer"]["recv"]
        data = update(models, 0)
        assert a.publish(data).accepted
        wait_for(lambda: b.status()["fetched_updates"] == 1, 30, "B to fetch the update")
        wait_for(
            lambda: (
                _traffic(b)["kinds"]["update_transfer"]["recv"] - recv0 >= len(data)
                and _traffic(a)["kinds"]["update_transfer"]["sent"] - sent0 >= len(data)
            ),
            10,
            f"update_transfer to move by the update's {len(data)} bytes",
        )
        t = _traffic(b)
        assert t["total"]["recv"] >= _counted(t, "recv") and t["kinds"]["transport"]["recv"] > 0
        assert t["kinds"]["announcements"]["recv"] > 0  # B read A's announcement of the update


def test_an_all_reduce_in_averager_processes_counts_as_aggregation(tmp_path):
    """hivemind's averager runs in a process forked per attempt: its bytes reach the node's counters."""
    import asyncio

    import torch

    from potluck.engine.averager import CanonicalAverager, shutdown_averager
    from potluck.identity import NodeIdentity
    from potluck.swarm.host import SwarmHost

    async def scenario() -> list[dict]:
        hosts: list[SwarmHost] = []
        try:
            for i in range(2):
                key = tmp_path / f"node{i}.key"
                key.write_bytes(NodeIdentity.generate().libp2p_private_key())
                initial = [(await hosts[0].visible_addrs())[0]] if hosts else []
                hosts.append(SwarmHost(identity_path=key, listen=[LOOPBACK], initial_peers=initial))
                await hosts[-1].start()
            await asyncio.wait_for(hosts[1].bootstrap.connected_event.wait(), 30)
            vectors = [[torch.full((100_000,), float(i), dtype=torch.float64)] for i in range(2)]
            options = dict(start=True, prefix="t", target_group_size=2, min_group_size=2, request_timeout=1.0)
            averagers = [
                CanonicalAverager(v, h.dht, min_matchmaking_time=2.0, **options)
                for v, h in zip(vectors, hosts, strict=True)
            ]
            try:
                await asyncio.gather(*(asyncio.to_thread(a.step, timeout=60) for a in averagers))
            finally:
                for a in averagers:
                    shutdown_averager(a)
            return [h.traffic.sample() for h in hosts]
        finally:
            for h in hosts:
                await h.stop()

    for sample in asyncio.run(scenario()):
        # each peer reduces half of the 800 kB vector: it sends the other half and gets its result back
        assert sample["aggregation"][0] >= 400_000 and sample["aggregation"][1] >= 400_000
        if "total" in sample:
            assert sample["total"][0] >= sum(v[0] for k, v in sample.items() if k in KINDS)
