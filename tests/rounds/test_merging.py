"""rounds/merging.py: what a history-aware strategy is given (the counted updates' authors in the order
passed, the previous steps, the digest of every update id of the round), the commit chain it is read
from, and where such a strategy may merge."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from potluck.groups import GroupRules
from potluck.identity import NodeIdentity
from potluck.merge import StrategyError, get_strategy
from potluck.merge.context import entries_digest
from potluck.merge.probe import ProbeRule
from potluck.rounds.fixedpoint import Layout
from potluck.rounds.merging import (
    HistoryGap,
    history_chain,
    history_steps,
    merge_round,
    probe_round,
    run_merge,
)
from potluck.rounds.placement import PlacementError, check_policy
from potluck.runfiles import write_run
from potluck.tasks import get_task
from potluck.tasks.data import LabeledData
from potluck.updates.codec import SparseTensor, Update, decode_update, encode_update
from tests.support.history_strategy import StepClip

SPEC = "tests.support.history_strategy:step_clip"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run") / "run.toml", "toy", outer_lr=0.5)


def _updates(run, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        author = NodeIdentity.generate()
        tensors = tuple(
            SparseTensor(name, t.shape, np.arange(0, t.size, 3, dtype=np.int64),
                         rng.standard_normal(len(range(0, t.size, 3))).astype(np.float32))
            for name, t in sorted(run.state.items())
        )  # fmt: skip
        update = Update(run.manifest.run_id, 0, run.genesis_hash, author.public_key, i + 1, 10, tensors)
        out.append(decode_update(encode_update(update, author)))
    return out


def test_a_history_aware_strategy_gets_authors_previous_steps_and_the_rounds_digest(run):
    updates = _updates(run, 4)
    weighted = [(10, u) for u in updates[:3]] + [(0, updates[3])]  # the last on probation
    previous = ({name: np.full(t.shape, 0.01) for name, t in run.state.items()},)
    strategy = StepClip({})
    layout = Layout.from_state(run.state)
    state, total = merge_round(run.state, layout, weighted, run.manifest, strategy, 7, previous=previous)
    (context,) = strategy.seen
    assert context.authors == tuple(u.update.author.hex() for u in updates[:3])  # counted, as passed
    assert context.previous == previous
    assert context.digest == entries_digest(sorted(u.update_id for u in updates))  # every id, sorted
    assert total == 30 and len(strategy.last_factors) == 3
    # the same round with the updates in another order: the same bytes
    again, _ = merge_round(
        run.state, layout, weighted[::-1], run.manifest, StepClip({}), 7, previous=previous
    )
    assert all(np.array_equal(state[k], again[k]) for k in state)
    # the history moves the result: the same updates without it merge elsewhere
    none, _ = merge_round(run.state, layout, weighted, run.manifest, StepClip({}), 7, previous=())
    assert any(not np.array_equal(state[k], none[k]) for k in state)
    with pytest.raises(ValueError, match="pass the previous steps"):
        merge_round(run.state, layout, weighted, run.manifest, StepClip({}), 7)


def test_a_strategy_without_history_is_called_as_before(run):
    updates = _updates(run, 3)
    layout = Layout.from_state(run.state)
    mean = get_strategy("mean", {})
    state, _ = merge_round(run.state, layout, [(10, u) for u in updates], run.manifest, mean, 1, previous=())
    direct = mean.merge(updates, [10.0] * 3, round_seed=1)
    for name, t in run.state.items():
        assert np.array_equal(state[name], (t.astype(np.float64) + 0.5 * direct[name]).astype(t.dtype))


def test_history_chain_follows_parents_to_the_genesis_and_names_a_gap():
    parents = {"v3": "v2", "v2": "v1", "v1": "g"}
    assert history_chain("v3", "g", parents.get, 2) == ["v3", "v2", "v1"]
    assert history_chain("v3", "g", parents.get, 9) == ["v3", "v2", "v1", "g"]
    assert history_chain("v1", "g", parents.get, 4) == ["v1", "g"]
    assert history_chain("g", "g", parents.get, 4) == ["g"]  # round 0: no steps
    with pytest.raises(HistoryGap) as e:
        history_chain("v3", "g", {"v3": "v2"}.get, 3)
    assert e.value.version == "v2" and "no commit of version v2" in str(e.value)


def test_history_steps_are_the_merged_deltas_in_strategy_units():
    a = {"w": np.array([1.0, 2.0], np.float32)}
    b = {"w": np.array([1.5, 1.0], np.float32)}
    c = {"w": np.array([2.5, 1.0], np.float32)}
    steps = history_steps([c, b, a], 0.5)  # newest first
    assert [s["w"].tolist() for s in steps] == [[2.0, 0.0], [1.0, -2.0]]


def test_a_history_aware_strategy_merges_gathered_only():
    how = run_merge(SPEC, {}, GroupRules([]))
    assert (how.mean, how.coordinate, how.history) == (False, False, 1)
    for policy in ("auto", "gathered"):
        check_policy(policy, how.mean, how.coordinate, SPEC, how.history)
    for policy in ("sliced", "allreduce"):
        with pytest.raises(
            PlacementError, match=r"history-aware .* last 1 commits' steps.* runs gathered, not"
        ):
            check_policy(policy, how.mean, how.coordinate, SPEC, how.history)
    # a parameter group that picks it makes the whole run history-aware
    grouped = run_merge("weighted_mean", {}, GroupRules([f"l1.*:strategy={SPEC}"]))
    assert (grouped.mean, grouped.coordinate, grouped.history) == (False, False, 1)


def test_a_bad_history_rounds_is_one_clear_error():
    class Bad(StepClip):
        history_rounds = -1  # type: ignore[assignment]

    from potluck.rounds.merging import history_rounds

    with pytest.raises(StrategyError, match=r"step_clip: history_rounds must be an int in \[0, 64\], got -1"):
        history_rounds(Bad({}))


def test_damping_reads_the_strategys_factors_by_update_or_nothing(run):
    from potluck.rounds.merging import damping

    updates = _updates(run, 3)
    weighted = [(10, updates[0]), (0, updates[1]), (10, updates[2])]  # the middle one on probation
    strategy = StepClip({})
    strategy.last_factors = (1.0, 0.25)  # the counted deltas, as passed
    assert damping(strategy, weighted) == {updates[2].update_id: 0.25}
    for bad in ((1.0,), (1.0, 1.5), (1.0, float("nan")), "ab", None):
        strategy.last_factors = bad
        assert damping(strategy, weighted) == {}
    assert damping(get_strategy("mean", {}), weighted) == {} and damping(None, weighted) == {}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    task = get_task("digits")
    probe = task.probe_set(10)
    run = write_run(
        tmp_path_factory.mktemp("digits") / "run.toml", "digits", probe={"set": probe.digest()}, outer_lr=0.5
    )
    return run, ProbeRule(probe, task.layers, 0.5)


def _digits_updates(run, n: int, bad: int | None = None):
    """n signed updates, each 20 SGD steps on its own 200 training images; update ``bad``'s labels are
    flipped (``9 - y``)."""
    task, rng = get_task("digits"), np.random.default_rng(5)
    train = task.local_data(None)
    out = []
    for i in range(n):
        idx = rng.choice(len(train), 200, replace=False)
        y = 9 - train.y[idx] if i == bad else train.y[idx]
        new, _ = task.train(run.state, LabeledData(train.x[idx], y), steps=20, seed=i)
        author = NodeIdentity.generate()
        tensors = tuple(
            SparseTensor(k, t.shape, np.arange(t.size), (new[k] - t).reshape(-1).astype(np.float32))
            for k, t in sorted(run.state.items())
        )
        update = Update(run.manifest.run_id, 0, run.genesis_hash, author.public_key, i + 1, 10, tensors)
        out.append(decode_update(encode_update(update, author)))
    return out


def test_the_probe_rule_drops_before_the_strategy_as_weight_0_whatever_the_order(digits):
    run, probe = digits
    updates = _digits_updates(run, 5, bad=3)
    weighted = [(10, u) for u in updates]
    layout = Layout.from_state(run.state)
    kept, excluded = probe_round(run.state, weighted, probe, run.manifest.outer_lr)
    assert excluded[updates[3].update_id].reason == "probe_worse" and len(excluded) <= 2  # (5 - 1) // 2
    assert [u for _, u in kept] == updates
    assert [w for w, _ in kept] == [0 if u.update_id in excluded else 10 for u in updates]
    out: dict = {}
    state, total = merge_round(run.state, layout, weighted, run.manifest, None, 0, probe=probe, excluded=out)
    assert out == excluded and total == 10 * (5 - len(excluded))
    plain, _ = merge_round(run.state, layout, kept, run.manifest, None, 0)  # the drop is weight 0, no more
    assert all(np.array_equal(state[k], plain[k]) for k in state)
    again, _ = merge_round(run.state, layout, weighted[::-1], run.manifest, None, 0, probe=probe)
    assert all(np.array_equal(state[k], again[k]) for k in state)
    strategy = get_strategy("trimmed_mean", {})  # a strategy sees only what the rule kept
    by, _ = merge_round(run.state, layout, weighted, run.manifest, strategy, 0, probe=probe)
    alone, _ = merge_round(run.state, layout, kept, run.manifest, strategy, 0)
    assert all(np.array_equal(by[k], alone[k]) for k in by)


def test_the_probe_rule_scores_only_counted_updates_and_nothing_under_3(digits):
    run, probe = digits
    updates = _digits_updates(run, 4, bad=0)
    on_probation = [(10, updates[0]), (10, updates[1]), (0, updates[2]), (10, updates[3])]
    kept, excluded = probe_round(run.state, on_probation, probe, run.manifest.outer_lr)
    assert set(excluded) == {updates[0].update_id}  # 3 counted: (3 - 1) // 2 = 1 may go, the flipper
    assert kept == [(0, updates[0]), *on_probation[1:]]  # the one on probation is not scored
    two = [(10, updates[0]), (0, updates[2]), (10, updates[3])]
    assert probe_round(run.state, two, probe, run.manifest.outer_lr) == (two, {})


def test_a_run_with_a_probe_merges_gathered_only(digits):
    _, probe = digits
    how = run_merge("weighted_mean", {}, GroupRules(()), probe)
    assert how.mean and how.merging is None and not how.spread_mean and not how.coordinate
    assert run_merge("weighted_mean", {}, GroupRules(())).spread_mean
    check_policy("gathered", how.spread_mean, how.coordinate, probe=True)
    check_policy("auto", how.spread_mean, how.coordinate, probe=True)
    for where in ("allreduce", "sliced", "dense"):
        with pytest.raises(PlacementError, match=f"a run with a probe set merges gathered .*, not {where}"):
            check_policy(where, True, True, probe=True)


def test_a_probe_record_spares_a_trusted_author_and_the_round_yields_its_scores(digits):
    run, plain = digits
    rule = dataclasses.replace(plain, decay=0.5, strict=10.0)  # a trusted author is all but never cut
    updates = _digits_updates(run, 5, bad=3)
    weighted = [(10, u) for u in updates]
    authors = [u.update.author.hex() for u in updates]
    scores: dict[str, float] = {}
    _, excluded = probe_round(run.state, weighted, rule, run.manifest.outer_lr, {}, scores)
    assert updates[3].update_id in excluded  # no record yet: the usual cut
    # what the commit names: each author's score over the round's median |score|, the flipper's lowest
    assert set(scores) == set(authors) and scores[authors[3]] == min(scores.values()) < 0
    again: dict[str, float] = {}
    probe_round(run.state, weighted[::-1], rule, run.manifest.outer_lr, {}, again)
    assert again == scores  # whatever order the updates arrived in
    record = {authors[3]: 0.5, authors[0]: -1.0}  # the flipper had scored well before
    _, spared = probe_round(run.state, weighted, rule, run.manifest.outer_lr, record, {})
    assert updates[3].update_id not in spared  # judged by the strict cut, -10 x the median
    layout = Layout.from_state(run.state)
    by, _ = merge_round(run.state, layout, weighted, run.manifest, None, 0, probe=rule, record=record)
    kept, _ = merge_round(run.state, layout, [(10 * (u.update_id not in spared), u) for u in updates],
                          run.manifest, None, 0)  # fmt: skip
    assert all(np.array_equal(by[k], kept[k]) for k in by)
