"""A history-aware merge between real nodes (issue 15): 4 keepers merge with ``history_clip`` a round's 6
updates, 2 of them by adaptive attackers (the negated honest mean, sized under the honest norms), for
3 rounds; every keeper holds the same versions and `potluck verify` replays them; the attackers' share
of each merged delta, computed here from the stored updates and versions alone, is far below an honest
contributor's. Then a keeper that joins late (its history starts at the version
it synced) fetches the earlier commits and versions from its peers and merges the 4th round with the
others: the same bytes, its own signature on the commit."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.identity import NodeIdentity
from potluck.localswarm import LocalSwarm, wait_for
from potluck.node import HISTORY_FILE
from potluck.runfiles import write_run
from potluck.store.history import History
from potluck.store.versions import VersionStore
from potluck.updates.codec import decode_update
from tests.support.adaptive import dense, flat, opposite_under_radius, signed_update
from tests.support.cli import potluck_json
from tests.support.swarm import connected_swarm

pytestmark = pytest.mark.multiprocess
ROUND_S = 30.0  # "ready" pacing: a round closes once a keeper holds its 6 updates (target_samples)
HONEST, ATTACKERS, SAMPLES, DENSITY = 4, 2, 10, 0.25


def _round(swarm: LocalSwarm, keepers, run, r: int, authors, rng, direction) -> list[bytes]:
    """Round ``r``: the honest updates (a shared direction plus noise), then the attackers' (crafted
    from the published honest ones), spread over the keepers; waits for every keeper's commit."""
    wait_for(lambda: all(k.status()["committed_round"] == r - 1 for k in keepers), 60, f"V_{r} everywhere")
    base = keepers[0].status()["version"]
    state = VersionStore(keepers[0].data_dir / "versions").get(base)
    datas = []
    for a in authors[:HONEST]:
        delta = {n: direction[n] + 0.5 * rng.standard_normal(t.shape) * 0.02 for n, t in state.items()}
        datas.append(signed_update(a, run.manifest.run_id, r, base, delta, DENSITY, SAMPLES))
    attack = opposite_under_radius([dense(decode_update(d).update) for d in datas])
    datas += [
        signed_update(a, run.manifest.run_id, r, base, attack, DENSITY, SAMPLES) for a in authors[HONEST:]
    ]
    for i, data in enumerate(datas):
        reply = keepers[i % len(keepers)].publish(data)
        assert reply.accepted, f"{reply.reason}: {reply.detail}"
    wait_for(lambda: all(k.status()["committed_round"] >= r for k in keepers), ROUND_S + 30, f"round {r}")
    return datas


def _shares(versions: list[dict], lr: float, round_updates: list[list[bytes]], r: int) -> np.ndarray:
    """Each update's coefficient in round r's merged delta (V_{r+1} - V_r) / lr, by least squares over
    the round's updates and the merged steps before it (the rule's center is a combination of those):
    exact for a rule that averages clipped updates around such a center. Independent of the rule's code."""
    names = sorted(versions[0])
    step = lambda k: (flat(versions[k + 1], names) - flat(versions[k], names)) / lr  # noqa: E731
    xs = [flat(dense(decode_update(d).update), names) for d in round_updates[r]]
    columns = xs + [step(k) for k in range(r)]
    coef, *_ = np.linalg.lstsq(np.stack(columns, axis=1), step(r), rcond=None)
    fit = np.stack(columns, axis=1) @ coef
    assert np.linalg.norm(fit - step(r)) < 1e-3 * np.linalg.norm(step(r)), "not a combination of its inputs"
    return coef[: len(xs)]


def _rounds(data_dir) -> list[int]:
    with History(data_dir / HISTORY_FILE, readonly=True) as h:
        return [e["round"] for e in h.log()]


def test_history_clip_agrees_everywhere_damps_adaptive_attackers_and_a_late_keeper_merges_alike(tmp_path):
    run = write_run(
        tmp_path / "run.toml", "toy", round_seconds=ROUND_S, density=DENSITY, pacing="ready",
        target_samples=(HONEST + ATTACKERS) * SAMPLES, strategy="history_clip", quorum=3,
    )  # fmt: skip
    authors = [NodeIdentity.generate() for _ in range(HONEST + ATTACKERS)]
    rng = np.random.default_rng(15)
    direction = {n: rng.standard_normal(t.shape) * 0.02 for n, t in run.state.items()}
    published: list[list[bytes]] = []
    with connected_swarm(tmp_path / "swarm", 4, manifest=run.path) as swarm:
        keepers = list(swarm.nodes)
        for r in range(3):
            published.append(_round(swarm, keepers, run, r, authors, rng, direction))
        logs = [potluck_json("log", "--data-dir", str(k.data_dir)) for k in keepers]
        assert all([e["version"] for e in log] == [e["version"] for e in logs[0]] for log in logs), logs
        assert [e["updates"] for e in logs[0]] == [6, 6, 6]
        assert {k.status()["aggregation"]["placement"] for k in keepers} == {"gathered"}

        # a keeper that joins now holds V_3 and the commit of round 2 only
        joiner = swarm.add_node(name="joiner", extra_args=["--run", run.manifest.run_id]).wait_ready()
        v3 = logs[0][-1]["version"]
        wait_for(lambda: joiner.status()["version"] == v3, 60, "the late keeper to sync")
        swarm.wait_all_see(4)
        published.append(_round(swarm, [*keepers, joiner], run, 3, authors, rng, direction))
        statuses = [n.status() for n in [*keepers, joiner]]
        assert len({s["version"] for s in statuses}) == 1, statuses
        joined, joiner_id = joiner.data_dir, statuses[-1]["node_id"]
        # its history records round 3's commit a moment after its status shows the version
        wait_for(lambda: _rounds(joined) == [0, 1, 2, 3], 30, "the late keeper's history to hold rounds 0-3")

    store = VersionStore(keepers[0].data_dir / "versions")
    versions = [store.get(run.manifest.genesis)] + [
        store.get(e["version"]) for e in potluck_json("log", "--data-dir", str(keepers[0].data_dir))
    ]
    shares = [_shares(versions, run.manifest.outer_lr, published, r) for r in range(4)]
    for r, s in enumerate(shares):
        honest, attackers = s[:HONEST], s[HONEST:]
        print(f"round {r}: honest shares {np.round(honest, 3)}, attackers' {np.round(attackers, 3)}")
        assert max(abs(attackers)) < 0.25 * min(honest), (r, s)  # (a plain mean: 1/6 each)

    with History(joined / HISTORY_FILE, readonly=True) as h:
        assert [e["round"] for e in h.log()] == [0, 1, 2, 3]  # the fetched commits are recorded
        assert joiner_id in {s.node_id for s in h.signatures(3)}  # it merged the same bytes
    for k in keepers:
        report = potluck_json("verify", "--data-dir", str(k.data_dir))
        assert report["ok"] and report["rounds"] == 4, report
    report = potluck_json("verify", "--data-dir", str(joined), "--from", "r2")
    assert report["ok"] and report["rounds"] == 1, report


def test_status_log_and_show_say_which_updates_the_strategy_damped(tmp_path):
    """A strategy that reports its factors (tests/support/history_strategy.py: clip to 2x the median norm
    in round 0) on 3 keepers: one update 6x the others is damped; status, the log and `potluck show` name
    it with the factor computed here from its stored bytes."""
    run = write_run(
        tmp_path / "run.toml", "toy", round_seconds=ROUND_S, density=DENSITY, pacing="ready",
        target_samples=4 * SAMPLES, strategy="tests.support.history_strategy:step_clip",
        strategy_args={"radius": 2.0}, quorum=2,
    )  # fmt: skip
    authors = [NodeIdentity.generate() for _ in range(4)]
    rng = np.random.default_rng(3)
    datas = []
    for i, a in enumerate(authors):
        delta = {n: rng.standard_normal(t.shape) * 0.02 * (6 if i == 3 else 1) for n, t in run.state.items()}
        datas.append(signed_update(a, run.manifest.run_id, 0, run.manifest.genesis, delta, DENSITY, SAMPLES))
    names = sorted(run.state)
    norms = [float(np.linalg.norm(flat(dense(decode_update(d).update), names))) for d in datas]
    expected = 2.0 * sorted(norms)[1] / norms[3]  # around 0 (no history yet), tau = 2 x the lower median
    big = decode_update(datas[3]).update_id
    with connected_swarm(tmp_path / "swarm", 3, manifest=run.path) as swarm:
        for i, data in enumerate(datas):
            reply = swarm.nodes[i % 3].publish(data)
            assert reply.accepted, f"{reply.reason}: {reply.detail}"
        wait_for(
            lambda: all(n.status()["committed_round"] >= 0 for n in swarm.nodes), ROUND_S + 30, "round 0"
        )
        merged = [n for n in swarm.nodes if n.status()["aggregation"].get("damped")]
        assert merged, [n.status()["aggregation"] for n in swarm.nodes]
        for node in merged:
            damped = node.status()["aggregation"]["damped"]
            assert set(damped) == {big} and damped[big] == pytest.approx(expected, rel=1e-6)
        assert f"damped 1 of 4 updates: {big[:12]} x{expected:.3f}" in merged[0].log_path.read_text()
        shown = potluck_json("show", "r0", "--data-dir", str(merged[0].data_dir))
    rows = {u["update_id"]: u for u in shown["updates"]}
    assert rows[big]["damped"] == pytest.approx(expected, rel=1e-6)
    assert [k for k, u in rows.items() if "damped" in u] == [big]
