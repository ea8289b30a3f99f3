"""Watching a live 3-node run: /metrics moves as the run does (accepted updates, commits, bytes, a
rejection under its reason), the dashboard in headless Chromium follows a commit without reloading,
and `potluck status --watch` draws the live node under a pseudo-terminal."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from potluck.identity import NodeIdentity
from potluck.localswarm import LocalNode, LocalSwarm, next_collecting_round, wait_for
from potluck.node import HISTORY_FILE
from potluck.runfiles import write_run
from potluck.store.history import History
from potluck.store.versions import VersionStore
from potluck.updates.codec import Update, encode_update
from potluck.updates.sparsify import sparsify
from tests.support.browser import Browser, chromium
from tests.support.cli import potluck
from tests.support.pty import Terminal
from tests.support.swarm import connected_swarm

pytestmark = pytest.mark.multiprocess
ROUND_S = 16.0  # the toy model's attempt needs 3.5 s of the last quarter
AUTHORS = [NodeIdentity.generate() for _ in range(3)]
SCREENSHOT = Path(__file__).resolve().parents[2] / "bench" / "out" / "dashboard.png"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run") / "run.toml", "toy", round_seconds=ROUND_S, density=0.25)


@pytest.fixture(scope="module")
def swarm(run, tmp_path_factory):
    extra = ["--metrics-listen", "127.0.0.1:0"]
    with connected_swarm(tmp_path_factory.mktemp("watch-"), 3, manifest=run.path, extra_args=extra) as swarm:
        yield swarm


@pytest.fixture(scope="module")
def page(swarm):
    """Headless Chromium on node 1's dashboard, loaded before the rounds the tests run: what it shows
    of them it learned without a reload."""
    if chromium() is None:
        yield None
        return
    url = potluck("dashboard", "--data-dir", str(swarm.nodes[1].data_dir), check=True).stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url)
    browser = Browser(url)
    try:
        browser.wait_for("document.getElementById('connection').textContent === 'live'", 30, "live")
        yield browser
    finally:
        browser.close()


def update(node: LocalNode, run_id: str, author: NodeIdentity, r: int, seed: int) -> bytes:
    base = node.status()["version"]
    state = VersionStore(node.data_dir / "versions").get(base)
    rng = np.random.default_rng(seed)
    tensors = tuple(
        sparsify(name, rng.standard_normal(t.shape).astype(np.float32) * 0.05, 0.25)
        for name, t in state.items()
    )
    return encode_update(
        Update(run_id, r, base, author.public_key, int(time.time() * 1000), 10, tensors), author
    )


def one_round(run, swarm: LocalSwarm, seed: int) -> int:
    """Every node publishes one update in the next round; wait until every node committed it."""
    r = next_collecting_round(run.manifest)
    for i, node in enumerate(swarm.nodes):
        reply = node.publish(update(node, run.manifest.run_id, AUTHORS[i], r, seed + i))
        assert reply.accepted, f"{reply.reason}: {reply.detail}"
    wait_for(lambda: all(n.status()["committed_round"] >= r for n in swarm.nodes), ROUND_S + 15, f"round {r}")
    return r


def metrics_url(node: LocalNode) -> str:
    match = re.search(r"metrics on (http://\S+/metrics)", node.log_path.read_text())
    assert match, f"the node did not say where its metrics are:\n{node.log_tail()}"
    return match.group(1)


def scrape(node: LocalNode) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(metrics_url(node), timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=")
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def traffic(samples: dict, direction: str) -> float:
    return sum(v for (name, _), v in samples.items() if name == f"potluck_traffic_{direction}_bytes_total")


def test_metrics_move_as_the_run_does(run, swarm, page):
    node = swarm.nodes[0]
    before = scrape(node)
    assert total(before, "potluck_up") == 1 and total(before, "potluck_peers") == 2
    rounds = [one_round(run, swarm, seed=10 * k) for k in range(2)]
    # an update of another run: refused, and counted under its reason
    stranger = update(node, "00" * 32, NodeIdentity.generate(), rounds[-1] + 1, seed=99)
    reply = node.publish(stranger)
    assert not reply.accepted and reply.reason == "wrong_run"
    after = scrape(node)

    # each round: its own update and the two it fetched from the others
    assert (
        total(after, "potluck_updates_accepted_total") >= total(before, "potluck_updates_accepted_total") + 6
    )
    assert total(after, "potluck_commits_total") >= total(before, "potluck_commits_total") + 2
    assert total(after, "potluck_committed_round") == rounds[-1]
    assert total(after, "potluck_aggregation_attempts_total") >= 2
    assert total(after, "potluck_updates_rejected_total", reason="wrong_run") == 1
    assert total(before, "potluck_updates_rejected_total", reason="wrong_run") == 0
    assert traffic(after, "sent") > traffic(before, "sent") and traffic(after, "received") > traffic(
        before, "received"
    )
    assert total(after, "potluck_traffic_sent_bytes_total", kind="update_transfer") > 0
    assert total(after, "potluck_last_commit_phase_seconds", phase="merge") > 0
    # the commit latency histogram: both commits observed, and no bucket went down between scrapes
    latency = "potluck_commit_latency_seconds"
    assert total(after, f"{latency}_count") >= total(before, f"{latency}_count") + 2
    assert total(after, f"{latency}_sum") > total(before, f"{latency}_sum")
    buckets = [k for k in after if k[0] == f"{latency}_bucket"]
    assert len(buckets) > 2 and all(after[k] >= before.get(k, 0.0) for k in buckets)


def history(node: LocalNode) -> list[dict]:
    with History(node.data_dir / HISTORY_FILE, readonly=True) as h:
        return h.log()


@pytest.mark.skipif(chromium() is None, reason="no chromium (apt-get install chromium; .ci/run installs it)")
def test_the_dashboard_followed_the_commits_in_a_browser(swarm, page):
    node = swarm.nodes[1]
    status = node.status()
    r, version = status["committed_round"], status["version"]
    assert r >= 1, "test_metrics_move_as_the_run_does ran two rounds first"
    # loaded before those rounds, never reloaded: it polled its way to the new version and its point
    page.wait_for(f"document.getElementById('version').dataset.version === '{version}'", 15, version)
    last_point = "(document.querySelector('#curve circle:last-of-type title') || {}).textContent || ''"
    page.wait_for(f"{last_point}.startsWith('round {r}:')", 30, f"round {r}'s point on the curve")
    evaluated = [e for e in history(node) if e["accuracy"] is not None and e["accuracy"] >= 0]
    assert page.evaluate("Number(document.getElementById('curve').dataset.points)") == len(evaluated) >= 2
    contributors = {c for e in history(node) for c in e["contributors"]}
    assert contributors == {a.node_id for a in AUTHORS}
    rows = page.evaluate("[...document.querySelectorAll('#contributors tr span')].map(e => e.title)")
    assert sorted(rows) == sorted(contributors)
    # every contributor's merged updates are held here: bytes, samples and a weight in each row
    cells = page.evaluate(
        "[...document.querySelectorAll('#contributors tr')].map(r => [...r.cells].map(c => c.textContent))"
    )
    assert all(c[3].endswith("B") and int(c[4]) > 0 and int(c[5]) > 0 for c in cells), cells
    assert page.evaluate("document.querySelectorAll('#peer-list tr').length") == 2
    # every node merged every round itself: no download under way, and the tile says so
    assert page.evaluate("document.getElementById('sync').textContent") == "idle"
    assert page.evaluate("document.getElementById('rejections').textContent").startswith("none")
    page.screenshot(SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 10_000


def test_status_watch_draws_the_live_node_and_ctrl_c_exits_0(swarm):
    node = swarm.nodes[2]
    term = Terminal("status", "--watch", "--interval", "0.3", "--data-dir", str(node.data_dir))
    try:
        screen = term.read_until(lambda s: s.count(b"\x1b[H") >= 3 and s.count(b"node id") >= 2, 60)
        assert node.status()["node_id"].encode() in screen and b"version" in screen
        assert term.interrupt() == 0
    finally:
        term.close()
