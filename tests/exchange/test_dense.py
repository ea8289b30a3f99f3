"""The dense path's transport over real libp2p hosts (three p2pd in this process): the reduce-scatter
and all-gather give every participant the exact sum, over the direct channel or libp2p; bytes that do
not match what their sender stated are refused."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from potluck.exchange.dense import DenseService, DenseUnavailable, reduce_scatter
from potluck.rounds import dense
from tests.exchange.test_state import holder, host

pytestmark = pytest.mark.multiprocess

KEY = dense.attempt_key("run", 1, 0)


def contributions(n: int, length: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    qs = [rng.integers(-(2**20), 2**20, length) for _ in range(n)]
    qs[0][:100] = 2**40  # the first range needs int64: its sum travels in int64, the rest in int32
    qs[1][-300:] = 0  # and the last one is narrower in one contribution
    return qs


def test_every_participant_ends_with_the_exact_sum_direct_or_over_libp2p(tmp_path):
    n, length = 3, 100_000
    qs = contributions(n, length)
    bounds = dense.range_bounds(length, n)

    async def scenario() -> None:
        hosts = [await host(tmp_path / f"h{i}") for i in range(n)]
        services = [DenseService(h, "run") for h in hosts]
        try:
            for s in services:
                await s.start()
            services[2].direct = False  # reads over libp2p streams only
            signed: dict[int, bytes] = {}

            def node(i: int):
                def sign(lo: int, hi: int, digest: bytes) -> bytes:
                    signed[i] = b"header of %d " % i + digest
                    return signed[i]

                def check_header(j: int, header: bytes, digest: bytes, values: np.ndarray) -> None:
                    assert header == b"header of %d " % j + digest
                    assert digest == dense.tree_digest(values)  # the merged range as it was served

                peers = [None if j == i else holder(hosts[j]) for j in range(n)]
                return reduce_scatter(
                    services[i], KEY, i, peers, bounds, qs[i], sign, check_header, None, time.time() + 30
                )

            results = await asyncio.gather(*(node(i) for i in range(n)))
            exact = sum(qs)
            for r in results:
                assert r.dtype == np.int64 and np.array_equal(r, exact)  # one range was int64
            assert services[0].server is not None and services[0].server.bytes_served > 0
        finally:
            for s, h in zip(services, hosts, strict=True):
                await s.stop()
                await h.stop()

    asyncio.run(scenario())


def test_bytes_that_differ_from_the_stated_digest_are_refused(tmp_path):
    async def scenario() -> None:
        sender, receiver = await host(tmp_path / "s"), await host(tmp_path / "r")
        services = [DenseService(sender, "run"), DenseService(receiver, "run")]
        try:
            for s in services:
                await s.start()
            part = dense.encode(np.arange(5000, dtype=np.int64))
            services[0].offer(KEY, {"c1": (part, dense.digest(part))})
            part[17] += 1  # served bytes now differ from the stated digest
            session = services[1].session(KEY, *holder(sender), time.time() + 10)
            with pytest.raises(DenseUnavailable, match="does not match its stated digest"):
                await session.fetch("c1", part.size)
            with pytest.raises(DenseUnavailable, match="stated c1: 5000 values, not 5001"):
                await session.fetch("c1", part.size + 1)  # not the length the range needs
            session.close()
            late = services[1].session(KEY, *holder(sender), time.time() + 0.5)
            with pytest.raises(DenseUnavailable, match="did not offer c9 in time"):
                await late.fetch("c9", 10)
        finally:
            for s in services:
                await s.stop()
            await sender.stop()
            await receiver.stop()

    asyncio.run(scenario())
