"""The probe set between real nodes (issue 15): 3 keepers of a digits run that names the task's probe set
and keeps a per-author record (``potluck init --probe --probe-record``) merge 3 rounds of 5 updates
each, 2 of them by label flippers (trained on ``9 - label``), merged by ``history_clip`` after the probe
rule (the defence bench/README.md measures). Every keeper scores every update on the probe set before
the strategy and drops the same two: the versions are the same bytes on every keeper
(a quorum of 3 equal signatures), each commit names the same record (the flippers' below every honest
author's), status and the log name the flippers' updates and the reason, `potluck show` lists them at
weight 0 and `potluck verify` replays the drops and the record. And a node whose manifest names a probe
set its task does not hand refuses to run, in one line."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from potluck.cli import main
from potluck.cli.format import format_status
from potluck.cli.vcs import describe, format_show
from potluck.identity import NodeIdentity
from potluck.localswarm import LocalSwarm, wait_for
from potluck.node import HISTORY_FILE
from potluck.runfiles import write_run
from potluck.store.history import History
from potluck.store.versions import VersionStore
from potluck.tasks import get_task
from potluck.tasks.data import LabeledData
from potluck.updates.codec import decode_update
from potluck.vcs.repo import HistoryRepo
from tests.support.adaptive import signed_update
from tests.support.cli import potluck, potluck_json
from tests.support.swarm import connected_swarm

pytestmark = pytest.mark.multiprocess
ROUND_S = 30.0  # "ready" pacing: a round closes once a keeper holds its 5 updates (target_samples)
HONEST, FLIPPERS, SAMPLES, DENSITY, ROUNDS = 3, 2, 10, 0.25, 3


def _committed(keepers, r: int) -> bool:
    return all(k.status()["committed_round"] >= r for k in keepers)


def _updates(task, run, r: int, base: str, state, authors, rng) -> list[bytes]:
    """Round ``r``'s updates on ``state``: 20 SGD steps on 200 training images each; the flippers'
    labels are ``9 - y``."""
    train = task.local_data(None)
    out = []
    for i, author in enumerate(authors):
        idx = rng.choice(len(train), 200, replace=False)
        y = train.y[idx] if i < HONEST else 9 - train.y[idx]
        new, _ = task.train(state, LabeledData(train.x[idx], y), steps=20, seed=100 * r + i)
        delta = {k: new[k].astype(np.float64) - state[k] for k in state}
        out.append(signed_update(author, run.manifest.run_id, r, base, delta, DENSITY, SAMPLES))
    return out


def test_keepers_drop_the_label_flippers_alike_and_verify_replays_it(tmp_path, capsys):
    task = get_task("digits")
    # the defence bench/README.md recommends: history_clip after the probe rule with a record
    probe = {"set": task.probe_set(10).digest(), "per_class": 10, "frac": 0.75, "record": 0.5, "strict": 1.0}
    run = write_run(
        tmp_path / "run.toml", "digits", round_seconds=ROUND_S, density=DENSITY, pacing="ready",
        target_samples=(HONEST + FLIPPERS) * SAMPLES, quorum=3, probe=probe, strategy="history_clip",
    )  # fmt: skip
    authors = [NodeIdentity.generate() for _ in range(HONEST + FLIPPERS)]
    rng = np.random.default_rng(15)
    flipped: list[set[str]] = []
    with connected_swarm(tmp_path / "swarm", 3, manifest=run.path) as swarm:
        keepers = list(swarm.nodes)
        for r in range(ROUNDS):
            wait_for(functools.partial(_committed, keepers, r - 1), 60, f"V_{r} everywhere")
            base = keepers[0].status()["version"]
            state = VersionStore(keepers[0].data_dir / "versions").get(base)
            datas = _updates(task, run, r, base, state, authors, rng)
            flipped.append({decode_update(d).update_id for d in datas[HONEST:]})
            for i, data in enumerate(datas):
                reply = keepers[i % 3].publish(data)
                assert reply.accepted, f"{reply.reason}: {reply.detail}"
            wait_for(functools.partial(_committed, keepers, r), ROUND_S + 30, f"round {r}")
            for k in keepers:  # every keeper merged (quorum 3 of 3) and dropped the same two
                agg = k.status()["aggregation"]
                assert agg["placement"] == "gathered"
                assert agg["probe_excluded"] == {u: "probe_worse" for u in flipped[r]}, agg
        statuses = [k.status() for k in keepers]
        text = format_status(statuses[0])  # what `potluck status` prints
        node_log = keepers[0].log_path.read_text()

    logs, records = [], []
    for k in keepers:
        with History(k.data_dir / HISTORY_FILE, readonly=True) as h:
            logs.append(h.log())
            records.append([dict(h.get(r).record) for r in range(ROUNDS)])
    assert all(r == records[0] for r in records), records  # signed by all 3: the same record everywhere
    flippers = {a.public_key.hex() for a in authors[HONEST:]}
    for record in records[0]:  # after each round: every author, the flippers below every honest one
        assert set(record) == {a.public_key.hex() for a in authors}, record
        assert max(record[a] for a in flippers) < min(v for a, v in record.items() if a not in flippers)
    assert len({s["version"] for s in statuses}) == 1, statuses
    assert all([e["version"] for e in log] == [e["version"] for e in logs[0]] for log in logs), logs
    assert [(e["updates"], e["signatures"]) for e in logs[0]] == [(5, 3)] * ROUNDS  # 3 equal signatures
    assert all(s["aggregation"]["probe_counts"] == {"probe_worse": 2 * ROUNDS} for s in statuses), statuses
    assert f"excluded {2 * ROUNDS} update(s) since start (probe_worse): the merge scores better" in text, text
    assert "the probe set excluded 2 of 5 updates" in node_log
    assert all(u[:12] in node_log for u in set().union(*flipped))
    with HistoryRepo(keepers[0].data_dir) as repo:  # what `potluck show r1` prints
        shown = describe(repo, repo.resolve("r1"))
        assert "excluded by the probe set (probe_worse)" in format_show(shown)
        for a in flippers:  # and each author's record after the round
            assert f"{a[:16]} probe record -" in format_show(shown) and shown["probe_record"][a] < 0
    rows = {u["update_id"]: u for u in shown["updates"]}
    assert {u for u, row in rows.items() if row.get("excluded")} == flipped[1]
    assert all(rows[u]["weight"] == 0 for u in flipped[1])
    assert shown["total_weight"] == HONEST * SAMPLES
    capsys.readouterr()
    assert main(["blame", "--data-dir", str(keepers[0].data_dir), "--json"]) == 0  # what moved the model
    blamed = json.loads(capsys.readouterr().out)
    for tensor in blamed[
        "tensors"
    ]:  # the dropped updates moved nothing: the honest authors' shares add up to 1
        rows = {r["author"]: r for r in tensor["authors"]}
        assert all(rows[a]["share"] == 0 for a in flippers if a in rows), tensor
        assert sum(r["share"] for a, r in rows.items() if a not in flippers) == pytest.approx(1), tensor
    report = potluck_json("verify", "--data-dir", str(keepers[1].data_dir))  # the same bytes everywhere
    assert report["ok"] and report["rounds"] == ROUNDS and report["updates"] == 5 * ROUNDS, report


def test_a_node_refuses_a_run_whose_probe_set_its_task_does_not_hand(tmp_path):
    probe = {"set": "0" * 64, "per_class": 10}  # not the hash of the digits task's probe set
    run = write_run(tmp_path / "run.toml", "digits", probe=probe)
    swarm = LocalSwarm.for_run(tmp_path / "swarm", run.manifest.run_id, run.path)
    proc = potluck("run", "--data-dir", str(tmp_path / "node"), *swarm.node_args(), timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "the probe set task 'digits' hands here hashes to" in last and "refusing to run" in last, (
        proc.stderr
    )
