"""Three hosts in three network namespaces on one bridge: a host cut off mid-round commits nothing
(quorum 2: alone it cannot), the other two go on, and once its cable is back it catches up.

The cable is pulled on the switch side (tests/support/netns.py): the cut-off host keeps its address and route
and just stops hearing from anybody. Every CLI call runs inside the host's namespace, where its control
API listens on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from potluck.identity import NodeIdentity
from potluck.rounds import schedule
from potluck.runfiles import load_manifest, write_run
from potluck.store.versions import VersionStore
from potluck.updates.codec import Update, encode_update
from potluck.updates.sparsify import sparsify
from tests.support import netns
from tests.support.netns import Lab, NsNode, ask_all, wait_until

pytestmark = [pytest.mark.multiprocess, pytest.mark.netns]
ROUND_S = 20.0
PORT = 7451
AUTHORS = [NodeIdentity.generate() for _ in range(4)]


def _say(*args: object) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


@pytest.fixture
def lab():
    reason = netns.unavailable()
    if reason:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    with Lab(3) as lab:
        yield lab
    left = [n for n in netns.namespaces() if n.endswith(lab.suffix)]
    assert not left, f"namespaces left behind: {left}"


@pytest.fixture
def run_file(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run.toml", "toy", round_seconds=ROUND_S, density=0.25, quorum=2).path


@pytest.fixture
def hosts(lab: Lab, run_file: Path, tmp_path: Path):
    nodes: list[NsNode] = []
    try:
        first = tmp_path / "h1"
        peer_id = json.loads(_run_local("id", "--data-dir", str(first), "--json"))["peer_id"]
        bootstrap = f"/ip4/{lab.ip(1)}/tcp/{PORT}/p2p/{peer_id}"
        for i in (1, 2, 3):
            args = [
                "--listen",
                f"/ip4/{lab.ip(i)}/tcp/{PORT}",
                "--rpc-listen",
                "127.0.0.1:0",
                "--manifest",
                str(run_file),
                "--record-ttl",
                "6",
            ]
            if i != 1:
                args += ["--initial-peers", bootstrap]
            nodes.append(NsNode(lab, i, tmp_path / f"h{i}", args).start())
        yield nodes
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.stop()
        for node in nodes:
            print(f"---- h{node.i} node.log (tail) ----\n{node.log_tail(25)}")


def _run_local(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "potluck", *args], capture_output=True, text=True, check=True
    ).stdout


def _publish(node: NsNode, manifest, author: NodeIdentity, r: int, base: str, seed: int) -> None:
    state = VersionStore(node.data_dir / "versions").get(base)
    rng = np.random.default_rng(seed)
    tensors = tuple(
        sparsify(name, rng.standard_normal(t.shape).astype(np.float32) * 0.05, 0.25)
        for name, t in state.items()
    )
    update = Update(
        manifest.run_id, r, base, author.public_key, int(time.time() * 1000), 10 + seed % 7, tensors
    )
    path = node.data_dir.parent / f"update-h{node.i}-r{r}-{seed}.bin"
    path.write_bytes(encode_update(update, author))
    reply = node.ask("update", "publish", str(path))
    assert reply["accepted"], reply


def _round_ids(held: list[dict], r: int) -> set[str]:
    return {u["update_id"] for u in held if u["round"] == r}


def _collecting(manifest, r: int | None = None) -> int:
    """Wait for round r's collecting phase to start (r = None: the next round's); return r."""
    if r is None:
        r = schedule.round_at(manifest, time.time()) + 1
    while time.time() < schedule.round_start(manifest, r) + 0.3:
        time.sleep(0.05)
    assert time.time() < schedule.round_start(manifest, r) + ROUND_S / 4, f"round {r} is too far along"
    return r


def test_a_host_cut_off_mid_round_commits_nothing_and_catches_up_after(lab, run_file, hosts):
    manifest = load_manifest(run_file)
    started = time.monotonic()
    h1, h2, h3 = hosts
    wait_until(
        lambda: all(s["peers"] == 2 for s in ask_all(hosts, "status")), 60, "every host to see 2 peers"
    )
    _say(f"3 hosts see each other after {time.monotonic() - started:.1f}s")

    # round r: everybody contributes, everybody commits the same version, signed by all three
    r = _collecting(manifest)
    base = h1.status()["version"]
    for k, node in enumerate(hosts):
        _publish(node, manifest, AUTHORS[k], r, base, seed=k)
    wait_until(
        lambda: all(s["committed_round"] >= r for s in ask_all(hosts, "status")), ROUND_S + 10, f"round {r}"
    )
    after_r = ask_all(hosts, "status")
    assert len({s["version"] for s in after_r}) == 1, [s["version"] for s in after_r]
    ids = [s["node_id"] for s in after_r]
    assert sorted(after_r[0]["participants"]) == sorted(ids)
    v_r = after_r[0]["version"]
    _say(f"round {r}: all three committed {v_r[:12]}")

    # round r1: h1 and h2 contribute (V_r is the base as soon as it is committed, so they publish at
    # once and every host holds both updates when r1 starts); early in r1's collecting phase h3's cable
    # is pulled, then h3 gets one more update that only it will ever hold
    r1 = r + 1
    _publish(h1, manifest, AUTHORS[0], r1, v_r, seed=10)
    _publish(h2, manifest, AUTHORS[1], r1, v_r, seed=11)
    wait_until(
        lambda: all(len(_round_ids(held, r1)) == 2 for held in ask_all(hosts, "update", "list")),
        ROUND_S / 2,
        "every host to hold both updates of the round",
    )
    _collecting(manifest, r1)
    assert all(s["committed_round"] == r for s in ask_all(hosts, "status"))
    lab.cut(3)
    cut_at = time.time()
    _say(f"round {r1}: h3 cut off {cut_at - schedule.round_start(manifest, r1):.1f}s into the round")
    # leave the survivors time to notice before they aggregate (a peer lost just before the
    # aggregation window can cost them that round: see the report that came with this test)
    assert cut_at < schedule.aggregation_start(manifest, r1) - ROUND_S / 4, "the cut came too late"
    _publish(h3, manifest, AUTHORS[3], r1, v_r, seed=13)

    # what h3 reports from the cut on: (seconds since the cut, committed_round, version, round_error)
    h3_seen: list[tuple[float, int, str, str]] = []

    def watch() -> list[dict]:
        statuses = ask_all(hosts, "status")
        s3 = statuses[2]
        h3_seen.append(
            (time.time() - cut_at, s3["committed_round"], s3["version"], s3.get("round_error", ""))
        )
        return statuses

    wait_until(
        lambda: all(s["committed_round"] >= r1 for s in watch()[:2]), ROUND_S + 10, f"h1, h2 to commit {r1}"
    )
    while time.time() < schedule.deadline(manifest, r1) + 1.0:  # h3's own attempt runs until the deadline
        watch()
        time.sleep(0.5)
    s1, s2, s3 = watch()
    assert s1["version"] == s2["version"] != v_r
    v_r1 = s1["version"]
    assert sorted(s1["participants"]) == sorted(s2["participants"]) == sorted(ids[:2])
    assert (s3["committed_round"], s3["version"]) == (r, v_r), f"h3 committed while cut off: {s3}"
    _say(f"round {r1}: h1, h2 committed {v_r1[:12]}; h3 stays at round {r} ({s3['round_error']!r})")

    # the cable is back: within two rounds h3 holds the version the others committed
    lab.restore(3)
    restored_at = time.time()

    def caught_up() -> bool:
        version = watch()[2]["version"]
        assert version in (v_r, v_r1), f"h3 moved to a version nobody else has: {h3_seen}"
        return version == v_r1

    try:
        wait_until(caught_up, 2 * ROUND_S + 4, f"h3 to catch up to {v_r1[:12]}", interval=1.0)
    except TimeoutError as e:
        peers = [[(p["peer_id"][-8:], p.get("addrs")) for p in n.ask("peers")] for n in hosts]
        statuses = [{k: s.get(k) for k in ("peers", "bootstrap", "round_error", "phase")} for s in watch()]
        raise AssertionError(
            f"{e}\nh3 since the cut: {h3_seen[-5:]}\npeers: {peers}\nstatus: {statuses}"
        ) from None
    _say(f"h3 caught up {time.time() - restored_at:.1f}s after the cable came back")
    s3 = h3.status()
    assert s3["committed_round"] >= r1 and s3["version"] == v_r1
    for _, committed, version, _ in h3_seen:  # never another version for round r1
        assert (committed, version) in {(r, v_r), (r1, v_r1)} or committed > r1, h3_seen
    log1, log3 = (
        {e["round"]: e for e in json.loads(_run_local("log", "--data-dir", str(n.data_dir), "--json"))}
        for n in (h1, h3)
    )
    assert log3[r1]["commit"] == log1[r1]["commit"] and log3[r1]["parent"] == v_r
    assert log3[r1]["updates"] == 2 and log3[r1]["signatures"] >= 2
    assert sorted(log3[r1]["contributors"]) == sorted(a.node_id for a in AUTHORS[:2])
    _say(f"done in {time.monotonic() - started:.1f}s")
