"""Per-group merge strategies: each group's tensors merged by its strategy over every update."""

import numpy as np

from potluck.groups import GroupRules
from potluck.merge import Grouped, get_strategy, run_strategy, supports_columns
from potluck.updates.codec import SparseTensor

SHAPES = {"a.weight": (4, 6), "a.bias": (6,), "b.weight": (6, 3)}


def _delta(seed: int, names=tuple(SHAPES)) -> dict[str, SparseTensor]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        n = int(np.prod(SHAPES[name]))
        idx = np.sort(rng.choice(n, n // 2, replace=False)).astype(np.int64)
        out[name] = SparseTensor(name, SHAPES[name], idx, rng.standard_normal(idx.size).astype(np.float32))
    return out


def test_no_other_strategy_is_the_plain_strategy():
    assert run_strategy("ties", {}, GroupRules(["a.*:freeze", "b.*:strategy=ties"])).name == "ties"


def test_each_group_is_merged_by_its_strategy_over_every_update():
    rules = GroupRules(["a.*:strategy=ties"])
    grouped = run_strategy("weighted_mean", {}, rules)
    assert isinstance(grouped, Grouped) and not supports_columns(grouped)  # merged gathered only
    deltas = [_delta(1), _delta(2, names=("b.weight",)), _delta(3)]
    weights = [3.0, 1.0, 2.0]
    merged = grouped.merge(deltas, weights, round_seed=7)
    ties = get_strategy("ties", {}).merge(
        [{k: v for k, v in d.items() if k.startswith("a.")} for d in deltas], weights, round_seed=7
    )
    mean = get_strategy("weighted_mean", {}).merge(deltas, weights, round_seed=7)
    assert set(merged) == set(SHAPES)
    for name in ("a.weight", "a.bias"):
        assert np.array_equal(merged[name], ties[name])
    assert np.array_equal(merged["b.weight"], mean["b.weight"])  # the same weights: all three updates
    again = grouped.merge(deltas[::-1], weights[::-1], round_seed=7)
    assert all(np.array_equal(merged[k], again[k]) for k in merged)  # input order does not matter


def test_a_history_aware_group_gets_the_context_cut_to_its_tensors():
    from potluck.merge.context import RoundContext

    grouped = run_strategy(
        "weighted_mean", {}, GroupRules(["a.*:strategy=tests.support.history_strategy:step_clip"])
    )
    assert isinstance(grouped, Grouped) and grouped.history_rounds == 1
    deltas = [_delta(1), _delta(2), _delta(3)]
    previous = ({name: np.full(shape, 0.1) for name, shape in SHAPES.items()},)
    context = RoundContext(("x", "y", "z"), previous, b"d" * 32)
    merged = grouped.merge(deltas, [1.0] * 3, round_seed=7, context=context)
    step_clip = grouped._strategies["tests.support.history_strategy:step_clip"]
    (seen,) = step_clip.seen
    assert seen.authors == context.authors and seen.digest == context.digest
    assert [sorted(s) for s in seen.previous] == [["a.bias", "a.weight"]]  # its own tensors only
    mean = get_strategy("weighted_mean", {}).merge(deltas, [1.0] * 3, round_seed=7)
    assert np.array_equal(merged["b.weight"], mean["b.weight"])
    without = grouped.merge(deltas, [1.0] * 3, round_seed=7, context=RoundContext(context.authors))
    assert not np.array_equal(merged["a.weight"], without["a.weight"])  # the history moved the result
