"""The DHT on a thread of the daemon: real p2pd and hivemind DHT nodes in this process, a forked process
reaching the DHT through hivemind's pipe (as an averager does), and a stopped DHT started again."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
import time

import pytest

from potluck.identity import NodeIdentity
from potluck.swarm.host import SwarmHost

pytestmark = pytest.mark.multiprocess
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


async def _hosts(tmp_path, n: int, on_dht_restart=None) -> list[SwarmHost]:
    hosts: list[SwarmHost] = []
    for i in range(n):
        key = tmp_path / f"node{i}.key"
        key.write_bytes(NodeIdentity.generate().libp2p_private_key())
        initial = [(await hosts[0].visible_addrs())[0]] if hosts else []
        hosts.append(
            SwarmHost(
                identity_path=key, listen=[LOOPBACK], initial_peers=initial, on_dht_restart=on_dht_restart
            )
        )
        await hosts[-1].start()
    for host in hosts[1:]:
        await asyncio.wait_for(host.bootstrap.connected_event.wait(), 30)
    return hosts


def _get_in_child(dht, key: str, out) -> None:
    found = dht.get(key, latest=True)
    out.send(None if found is None else sorted(found.value))


def test_the_dht_serves_from_a_thread_and_a_forked_process_reaches_it(tmp_path):
    async def scenario() -> None:
        a, b = await _hosts(tmp_path, 2)
        try:
            threads = {t.name for t in threading.enumerate()}
            assert "dht" in threads and a.child_pids() and len(a.child_pids()) == 1  # p2pd only
            expiration = time.time() + 60
            assert await a.store("t/key", b"a", b"from a", expiration)
            assert (await b.get("t/key"))[b"a"].value == b"from a"
            # hivemind's own API from this process (as an averager's constructor calls it) does not hang
            found = await asyncio.wait_for(asyncio.to_thread(b.dht.get, "t/key", True), 20)
            assert found.value[b"a"].value == b"from a"
            assert await asyncio.wait_for(asyncio.to_thread(lambda: b.dht.peer_id), 20) == b.p2p.peer_id
            # a forked child (an averager's way) sends its call down hivemind's pipe to B's thread
            here, there = mp.Pipe(duplex=False)
            child = mp.get_context("fork").Process(target=_get_in_child, args=(b.dht, "t/key", there))
            child.start()
            assert await asyncio.to_thread(here.poll, 20), "the forked process got no answer"
            assert here.recv() == [b"a"]
            await asyncio.to_thread(child.join, 10)
            assert child.exitcode == 0
        finally:
            for host in (a, b):
                await host.stop()
        assert not any(t.name == "dht" and t.is_alive() for t in threading.enumerate())

    asyncio.run(scenario())


def test_a_stopped_dht_is_started_again_and_answers(tmp_path):
    restarted = []

    async def on_restart() -> None:  # the node republishes its record here
        restarted.append(time.time())

    async def scenario() -> None:
        a, b = await _hosts(tmp_path, 2, on_restart)
        try:
            old = b.dht
            await asyncio.to_thread(old.shutdown)
            assert not old.is_alive()
            for _ in range(100):  # the supervisor looks every 0.5 s
                if b.dht_restarts == 1 and b._dht is not old and b.dht.is_alive():
                    break
                await asyncio.sleep(0.1)
            assert b.dht_restarts == 1 and len(restarted) == 1 and a.dht_restarts == 0
            await asyncio.wait_for(b.bootstrap.connected_event.wait(), 30)
            assert await b.store("t/again", b"b", b"after the restart", time.time() + 60)
            assert (await a.get("t/again"))[b"b"].value == b"after the restart"
        finally:
            for host in (a, b):
                await host.stop()

    asyncio.run(scenario())
