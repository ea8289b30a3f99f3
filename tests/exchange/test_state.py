"""Version download over real libp2p (three p2pd hosts in this process): tensors are checked against
the commit's hashes, a lying holder is caught and dropped, local tensors are reused; a version known
only by its hash (a pre-trained genesis) is fetched from a tensor list that makes up that hash."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from potluck.exchange.state import StateService, SyncFailed
from potluck.hashing import tensor_hashes, version_hash
from potluck.identity import P2P_KEY_FILE, load_or_create
from potluck.store.versions import VersionStore
from potluck.swarm.host import SwarmHost
from tests.support.attacks import serve_lying_tensor_list, serve_tampered_tensors

pytestmark = pytest.mark.multiprocess


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer{i}.weight": rng.standard_normal((64, 32)).astype(np.float32) for i in range(6)}


async def host(path) -> SwarmHost:
    path.mkdir()
    load_or_create(path)
    swarm_host = SwarmHost(identity_path=path / P2P_KEY_FILE, listen=["/ip4/127.0.0.1/tcp/0"])
    await swarm_host.start()
    await swarm_host.visible_addrs()
    return swarm_host


def holder(h: SwarmHost) -> tuple[str, list[str]]:
    return h.peer_id, list(h.addrs)


def test_download_checks_every_tensor_and_drops_a_liar(tmp_path):
    state = model(0)
    version, hashes = version_hash(state), tensor_hashes(state)

    async def scenario() -> None:
        honest, liar, syncer = (
            await host(tmp_path / "honest"),
            await host(tmp_path / "liar"),
            await host(tmp_path / "s"),
        )
        try:
            store = VersionStore(tmp_path / "honest-versions")
            store.put(state)
            await StateService(honest, store, lambda run_id: None).start()
            await serve_tampered_tensors(liar.p2p, state)
            service = StateService(syncer, VersionStore(tmp_path / "syncer-versions"), lambda run_id: None)
            await service.start()

            with pytest.raises(SyncFailed):
                await service.download(version, hashes, [holder(liar)])
            assert service.stats.bad_tensors == 1 and service.stats.tensors_downloaded == 0

            got = await service.download(version, hashes, [holder(liar), holder(honest)])
            assert version_hash(got) == version
            assert service.stats.tensors_downloaded == len(state)

            # a restarted node holding part of the state downloads only what it lacks
            have = {name: array for i, (name, array) in enumerate(sorted(state.items())) if i % 2 == 0}
            before = service.stats.tensors_downloaded
            again = await service.download(version, hashes, [holder(honest)], have=have)
            assert version_hash(again) == version
            assert service.stats.tensors_reused == len(have)
            assert service.stats.tensors_downloaded - before == len(state) - len(have)
        finally:
            for h in (honest, liar, syncer):
                await h.stop()

    asyncio.run(scenario())


def test_a_version_known_only_by_its_hash_comes_from_a_tensor_list_that_makes_it_up(tmp_path):
    state, other = model(1), model(2)
    version = version_hash(state)

    async def scenario() -> None:
        honest, liar, joiner = (
            await host(tmp_path / "honest"),
            await host(tmp_path / "liar"),
            await host(tmp_path / "joiner"),
        )
        try:
            store = VersionStore(tmp_path / "honest-versions")
            store.put(state)
            await StateService(honest, store, lambda run_id: None).start()
            await serve_lying_tensor_list(liar.p2p, other)  # a list, with hashes, of another version
            service = StateService(joiner, VersionStore(tmp_path / "joiner-versions"), lambda run_id: None)
            await service.start()

            with pytest.raises(SyncFailed, match="no peer listed the tensors"):
                await service.fetch_version(version, [holder(liar)])
            assert (
                service.stats.tensors_downloaded == 0
            )  # nothing fetched on a list that is not the version's
            got = await service.fetch_version(version, [holder(liar), holder(honest)])
            assert version_hash(got) == version and service.stats.tensors_downloaded == len(state)
        finally:
            for h in (honest, liar, joiner):
                await h.stop()

    asyncio.run(scenario())
