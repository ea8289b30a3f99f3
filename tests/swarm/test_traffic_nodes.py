"""Traffic by kind on real nodes: the kernel's count of p2pd's sockets, potluck's share by kind, and an
update of known size moving the update_transfer counters of its sender and its fetcher."""

from __future__ import annotations

import pytest

from potluck.localswarm import wait_for
from potluck.swarm.traffic import KINDS
from tests.exchange.test_exchange import models, update  # noqa: F401 (a fixture)
from tests.support.swarm import connected_swarm

pytestmark = pytest.mark.multiprocess


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
