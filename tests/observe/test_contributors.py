"""potluck.observe.contributors: per author, the bytes, samples and merge weight of the merged updates a
data dir holds (built as a node leaves it, tests/vcs/conftest.py), probation and missing updates included."""

from __future__ import annotations

from collections import defaultdict

from potluck.observe import contributors as contributors_module
from potluck.observe.contributors import Contributors
from potluck.store.history import HISTORY_FILE, History
from potluck.store.updates import UpdateStore
from potluck.updates.codec import decode_update
from tests.vcs.conftest import build_history


def expected(built, rounds: range, missing: set[str] = frozenset()) -> dict[str, dict[str, int]]:
    """What each author's merged updates add up to, read straight from the update files."""
    store = UpdateStore(built.data_dir / "updates")
    out: dict[str, dict[str, int]] = defaultdict(
        lambda: {"updates": 0, "bytes": 0, "samples": 0, "weight": 0}
    )
    for r in rounds:
        for uid in built.updates[r]:
            if uid in missing:
                continue
            data = store.get(uid)
            u = decode_update(data).update
            row = out[u.author.hex()]
            senior = r >= built.manifest.probation_rounds  # both authors contribute to every round
            row["updates"] += 1
            row["bytes"] += len(data)
            row["samples"] += u.sample_count
            row["weight"] += built.manifest.update_weight(u.sample_count) if senior else 0
    return out


def test_bytes_samples_and_weights_per_author_with_probation_and_a_missing_update(tmp_path):
    built = build_history(tmp_path, rounds=3, probation_rounds=1)  # round 0 weighs nothing
    gone = built.updates[2][0]
    (built.data_dir / "updates" / f"{gone}.update").unlink()  # e.g. collected before this node joined
    with History(built.data_dir / HISTORY_FILE, readonly=True) as history:
        table = Contributors(history, UpdateStore(built.data_dir / "updates"), built.manifest)
        log = history.log()
        got = table.table(log, log, {"defence": {"bans": [{"node_id": built.authors[1].node_id,
                                                           "reason": "equivocation"}]}})  # fmt: skip
    assert (got["not_held"], got["pending"]) == (1, 0)
    want = expected(built, range(3), missing={gone})
    rows = {r["node_id"]: r for r in got["rows"]}
    assert set(rows) == {a.node_id for a in built.authors}
    for node, row in rows.items():
        assert {k: row[k] for k in ("updates", "bytes", "samples", "weight")} == want[node], node
        assert (row["rounds"], row["last_round"]) == (3, 2)
    assert 0 < rows[built.authors[0].node_id]["weight"] < rows[built.authors[0].node_id]["samples"] + 1
    assert rows[built.authors[1].node_id]["ban"] == "equivocation"
    # without a manifest the weight is unknown (None), never a guess
    with History(built.data_dir / HISTORY_FILE, readonly=True) as history:
        log = history.log()
        got = Contributors(history, UpdateStore(built.data_dir / "updates"), None).table(log, log, {})
    assert {r["weight"] for r in got["rows"]} == {None}


def test_a_window_counts_only_its_rounds_and_the_reads_are_spread_over_calls(tmp_path, monkeypatch):
    built = build_history(tmp_path, rounds=3)
    monkeypatch.setattr(contributors_module, "READ_BUDGET_BYTES", 1)  # one update file per call
    with History(built.data_dir / HISTORY_FILE, readonly=True) as history:
        table = Contributors(history, UpdateStore(built.data_dir / "updates"), built.manifest)
        log = history.log()
        window = log[-2:]
        pending = [table.table(window, log, {})["pending"] for _ in range(4)]
        got = table.table(window, log, {})
    # two rounds of two updates, one file a call: round 2 is done on the 2nd call, round 1 on the 4th
    assert pending == [2, 1, 1, 0] and got["pending"] == 0
    want = expected(built, range(1, 3))
    for row in got["rows"]:
        assert {k: row[k] for k in ("updates", "bytes", "samples", "weight")} == want[row["node_id"]]
        assert row["rounds"] == 2


def test_one_call_reads_at_most_its_budget_of_commits(tmp_path, monkeypatch):
    built = build_history(tmp_path, rounds=3)
    monkeypatch.setattr(contributors_module, "READ_BUDGET_ROUNDS", 1)
    with History(built.data_dir / HISTORY_FILE, readonly=True) as history:
        table = Contributors(history, UpdateStore(built.data_dir / "updates"), built.manifest)
        log = history.log()
        calls = [table.table(log, log, {}) for _ in range(3)]
    assert [c["pending"] for c in calls] == [2, 1, 0]
    # the newest round is read first; the rounds column never waits for the reads
    assert {r["updates"] for r in calls[0]["rows"]} == {1} and {r["rounds"] for r in calls[0]["rows"]} == {3}
    assert {r["updates"] for r in calls[2]["rows"]} == {3}
