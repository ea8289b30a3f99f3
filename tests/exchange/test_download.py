"""Version download over the direct bulk channel between real hosts (a p2pd each, in this process):
pieces spread over several holders while status sees the download's progress, a holder whose direct
port is closed or who runs in client mode is read over libp2p, and a holder whose direct channel serves
a corrupted range is caught while the tensor is fetched elsewhere; and the download's pure helpers."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from potluck.exchange.bulk import PIECE_BYTES
from potluck.exchange.download import SyncProgress, _nbytes, addr_ips
from potluck.exchange.state import StateService
from potluck.hashing import tensor_hashes, version_hash
from potluck.identity import P2P_KEY_FILE, load_or_create
from potluck.store.versions import VersionStore
from potluck.swarm.host import SwarmHost


def test_direct_addresses_and_tensor_headers():
    addrs = ["/ip4/10.0.0.2/tcp/4001/p2p/Qm", "/ip4/9.9.9.9/tcp/1/p2p/Relay/p2p-circuit", "/dns4/x/tcp/1"]
    assert addr_ips(addrs) == ["10.0.0.2"]
    assert _nbytes("<f4", [3, 5]) == 60 and _nbytes("<f4", []) == 4
    assert _nbytes(">f4", [3]) is None and _nbytes("<f4", [1] * 9) is None
    assert _nbytes("<f8", [1 << 32]) is None  # over MAX_TENSOR_BYTES


def test_a_download_target_counts_each_tensor_once():
    progress = SyncProgress("ab" * 32)
    for name, size in (("w", 300), ("b", 100), ("w", 300)):
        progress.size(name, size)
    assert progress.target_bytes == 400


def model() -> dict[str, np.ndarray]:
    """Two tensors of ~1.1 pieces each (split in two) and a few small ones: ~20 MB."""
    rng = np.random.default_rng(7)
    big = (PIECE_BYTES * 11 // 10) // 4
    state = {f"big{i}": rng.standard_normal(big).astype(np.float32) for i in range(2)}
    state.update({f"small{i}": rng.standard_normal((64, 32)).astype(np.float32) for i in range(4)})
    return state


def tampered(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor with one bit flipped in each MiB (so in every piece of it)."""
    out = {}
    for name, array in state.items():
        copy = array.copy()
        copy.reshape(-1).view(np.uint8)[:: 1 << 20] ^= 1
        out[name] = copy
    return out


async def node(path, client_mode: bool = False) -> tuple[SwarmHost, StateService]:
    path.mkdir()
    load_or_create(path)
    host = SwarmHost(
        identity_path=path / P2P_KEY_FILE, listen=["/ip4/127.0.0.1/tcp/0"], client_mode=client_mode
    )
    await host.start()
    await host.visible_addrs()
    service = StateService(host, VersionStore(path / "versions"), lambda run_id: None)
    await service.start()
    return host, service


@pytest.mark.multiprocess
def test_bulk_sync_from_several_holders_with_fallbacks_and_a_corrupt_range(tmp_path):
    state = model()
    version, hashes = version_hash(state), tensor_hashes(state)
    total = sum(a.nbytes for a in state.values())

    async def scenario() -> None:
        nodes = [await node(tmp_path / f"h{i}") for i in range(3)]
        nodes.append(await node(tmp_path / "client", client_mode=True))
        newcomer, service = await node(tmp_path / "newcomer")
        try:
            for _, holder in nodes:
                holder._versions.put(state)
            holders = [(h.peer_id, list(h.addrs)) for h, _ in nodes]
            assert nodes[3][1].bulk is None  # client mode: no direct channel

            # three reachable holders: every byte over the direct channels, shared among them; status sees
            # the download under way (its version, bytes in of bytes needed), then nothing under way
            seen: list[tuple[str, int, int]] = []

            async def watch() -> None:
                while True:
                    p = service.progress
                    if not seen or seen[-1] != (p.version, p.bytes, p.target_bytes):
                        seen.append((p.version, p.bytes, p.target_bytes))
                    await asyncio.sleep(0)

            watcher = asyncio.create_task(watch())
            got = await service.download(version, hashes, holders[:3])
            watcher.cancel()
            assert version_hash(got) == version
            under_way = [(b, t) for v, b, t in seen if v == version]
            assert under_way and {t for _, t in under_way if t} == {total}
            assert [b for b, _ in under_way] == sorted(b for b, _ in under_way) and under_way[-1][0] <= total
            assert any(0 < b < total for b, _ in under_way), "no progress seen between start and end"
            assert (service.progress.version, service.progress.bytes) == ("", 0)
            assert service.stats.bytes_direct == total == service.stats.bytes_downloaded
            served = [s.bulk.bytes_served for _, s in nodes[:3]]
            assert sum(served) == total and sum(1 for b in served if b) >= 2, served

            # a holder whose direct port refuses connections (closed), and one in client mode: libp2p
            closed = nodes[0][1].bulk
            port = closed.port
            await closed.stop()
            closed.port = port  # still handed out in tickets, as if a firewall dropped it
            for holder in (holders[0], holders[3]):
                before = service.stats.bytes_downloaded
                got = await service.download(version, hashes, [holder])
                assert version_hash(got) == version
                assert service.stats.bytes_downloaded - before == total
                assert service.stats.bytes_direct == total  # nothing more came directly

            # holder 1's direct channel serves corrupted bytes: caught, dropped, fetched from holder 2
            corrupt = tampered(state)
            nodes[1][1].bulk.lookup = lambda v: corrupt if v == version else None
            before_direct = service.stats.bytes_direct
            got = await service.download(version, hashes, [holders[1], holders[2]])
            assert version_hash(got) == version
            assert service.stats.bad_tensors >= 1
            assert service.stats.bytes_direct > before_direct
        finally:
            for host, holder in [*nodes, (newcomer, service)]:
                await holder.stop()
                await host.stop()

    asyncio.run(scenario())
