"""Each update's term of a merge (merge/attribution.py): hand-made deltas whose terms are worked out here,
every built-in strategy's terms adding up to its merge, the projection rule for a strategy with no exact
one, and per-group strategies."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from potluck.groups import GroupRules
from potluck.merge import BUILTINS, get_strategy, run_strategy
from potluck.merge.attribution import attribute, projection


def _col(*values: float) -> list[dict[str, np.ndarray]]:
    """One delta per value, each a one-entry tensor "t"."""
    return [{"t": np.array([v])} for v in values]


def _terms(name: str, deltas: list, args: dict | None = None, weights: list | None = None) -> list[float]:
    got = attribute(get_strategy(name, args or {}), deltas, weights or [1.0] * len(deltas), 3)
    assert got.rule == "exact" and not got.unattributed
    return [float(t["t"][0]) for t in got.terms]


def test_median_goes_to_the_middle_values() -> None:
    dense = {"sparse": False}
    assert _terms("coordinate_median", _col(1, 100, 5), dense) == [0, 0, 5]
    assert _terms("coordinate_median", _col(100, 3, 1, 2), dense) == [0, 1.5, 0, 1]  # (2 + 3) / 2
    # sparse-aware: the touching values 4 and 6 (m = 2 of n = 3): (4 + 6) / 2 * 2 / 3, half each
    assert _terms("coordinate_median", _col(0, 4, 6)) == pytest.approx([0, 4 / 3, 2])


def test_trimmed_mean_goes_to_the_values_kept() -> None:
    # beta 0.25 of 4: one trimmed at each end, 1 and 2 averaged
    assert _terms("trimmed_mean", _col(60, 1, -50, 2), {"sparse": False}) == [0, 0.5, 0, 1]


def test_norm_filter_scales_and_drops() -> None:
    # norms 1, 1.5, 3.5, 100: median 1.5; 100 > 4 x 1.5 dropped, 3.5 > 2 x 1.5 clipped to 3; 3 kept
    assert _terms("norm_filter", _col(1, -1.5, 3.5, 100)) == pytest.approx([1 / 3, -0.5, 1, 0])


def test_multi_krum_goes_to_the_chosen() -> None:
    assert _terms("multi_krum", _col(1, 1.2, 0.8, 50), {"f": 1, "m": 2}) == pytest.approx([0.5, 0.6, 0, 0])


def test_centered_clip_counts_the_start_and_every_step() -> None:
    # start at the mean 3, one unclipped step: 2 / 2 + (2 - 3) / 2 and 4 / 2 + (4 - 3) / 2
    got = _terms("centered_clip", _col(2, 4), {"start": "mean", "iterations": 1, "tau": 100})
    assert got == [0.5, 2.5]
    # clipped: tau 1 around the mean 0 of -10 and 10 moves nothing, each term is x / 2 - clip / 2
    assert _terms("centered_clip", _col(-10, 10), {"start": "mean", "iterations": 1, "tau": 1}) == [-5.5, 5.5]


def test_geometric_median_and_ties() -> None:
    assert _terms("geometric_median", _col(0, 2)) == [0, 1]  # the mean 1 is a fixed point: 1/2 each
    # k 100: the elected sign is + (3 - 1 + 2), so 3 and 2 share the mean 2.5
    assert _terms("ties", _col(3, -1, 2), {"k": 100}) == [1.5, 0, 1]


def test_weights_and_input_order() -> None:
    # DARE with p 0 is the weighted mean; the terms follow their delta whatever the order
    deltas, weights = _col(1, 2, 4), [1.0, 2.0, 5.0]
    assert _terms("dare", deltas, {"p": 0}, weights) == pytest.approx([1 / 8, 4 / 8, 20 / 8])
    assert _terms("dare", deltas[::-1], {"p": 0}, weights[::-1]) == pytest.approx([20 / 8, 4 / 8, 1 / 8])
    unweighed = attribute(
        get_strategy("weighted_mean", {}), [*deltas, {"t": np.array([9.0])}], [*weights, 0], 0
    )
    assert unweighed.terms[3] == {}  # weight 0: not in the merge, nothing of it


def _random(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        d = {}
        for name, shape in (("a", (6, 5)), ("b", (9,))):
            x = rng.standard_normal(shape) * (1 + i)
            x[rng.random(shape) < 0.6] = 0
            d[name] = x
        out.append(d)
    out[2]["a"] *= 40  # an outlier for the robust rules
    return out


HISTORY_AWARE = {"history_clip"}  # their merge depends on earlier rounds: blame projects on the stored step
CASES: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in sorted(set(BUILTINS) - HISTORY_AWARE)] + [
    ("coordinate_median", {"sparse": False}),
    ("coordinate_median", {"min_support": 3}),
    ("trimmed_mean", {"beta": 0.4, "sparse": False}),
    ("centered_clip", {"start": "mean", "iterations": 3}),
    ("norm_filter", {"reject": 0, "clip": 1}),
    ("dare", {"p": 0.3, "lambda": 0.7}),
]


@pytest.mark.parametrize(("name", "args"), CASES)
def test_every_builtin_attributes_exactly_and_adds_up_to_its_merge(name: str, args: dict) -> None:
    deltas, weights = _random(7, 1), [3.0, 1.0, 2.0, 5.0, 1.0, 4.0, 2.0]
    strategy = get_strategy(name, args)
    merged = strategy.merge(deltas, weights, round_seed=11)
    got = attribute(strategy, deltas, weights, 11)
    assert got.rule == "exact" and not got.unattributed
    for tensor, d in merged.items():
        total = sum(t[tensor] for t in got.terms)
        atol = 2.0**-24 * 10 if name in ("mean", "weighted_mean") else 1e-12  # their fixed point's grid
        np.testing.assert_allclose(total, d, rtol=1e-12, atol=atol)


def test_history_aware_builtins_have_no_exact_rule_and_project_on_their_merge() -> None:
    for name in sorted(HISTORY_AWARE):
        strategy = get_strategy(name, {})
        assert getattr(strategy, "history_rounds", 0) > 0
        deltas, weights = _random(7, 3), [1.0] * 7
        got = attribute(strategy, deltas, weights, 5)
        assert got.rule == "projection"
        for tensor, d in strategy.merge(deltas, weights, round_seed=5).items():
            total = sum(t.get(tensor, 0) for t in got.terms) + got.unattributed.get(tensor, 0)
            np.testing.assert_allclose(total, d, rtol=1e-12, atol=1e-12)


class Momentum:
    """A third-party strategy with no exact rule: the sum of the deltas, plus 5 at b[0]."""

    name, kind, args = "momentum", "vector", {}

    def merge(self, deltas, weights, *, round_seed):
        out = {k: sum(np.asarray(d.get(k, 0.0), dtype=np.float64) for d in deltas) for k in ("a", "b")}
        out["b"] = out["b"] + np.array([5.0])
        return out


def test_projection_rule_for_a_strategy_without_an_exact_one() -> None:
    deltas = [{"a": np.array([1.0, 0.0]), "b": np.array([0.0])}, {"a": np.array([0.0, 3.0])}]
    got = attribute(Momentum(), deltas, [1.0, 1.0], 0)
    # D[a] = (1, 3): projections 1 and 9 of 10; D[b] = 5, which neither delta projects on
    assert got.rule == "projection"
    np.testing.assert_allclose(got.terms[0]["a"], [0.1, 0.3])
    np.testing.assert_allclose(got.terms[1]["a"], [0.9, 2.7])
    assert "b" not in got.terms[0] and list(got.unattributed) == ["b"] and got.unattributed["b"][0] == 5
    # on an exact rule's merge the projection rule adds up too, but shares differently
    median = get_strategy("coordinate_median", {"sparse": False})
    deltas = _random(5, 2)
    merged = median.merge(deltas, [1.0] * 5, round_seed=0)
    proj = projection(deltas, [1.0] * 5, merged)
    np.testing.assert_allclose(sum(t["a"] for t in proj.terms), merged["a"], atol=1e-12)


def test_per_group_strategies_are_attributed_group_by_group() -> None:
    grouped = run_strategy("norm_filter", {}, GroupRules(["b:strategy=coordinate_median"]))
    deltas, weights = _random(5, 3), [1.0] * 5
    got = attribute(grouped, deltas, weights, 0)
    assert got.rule == "grouped: coordinate_median exact, norm_filter exact"
    merged = grouped.merge(deltas, weights, round_seed=0)
    for tensor in ("a", "b"):
        np.testing.assert_allclose(sum(t[tensor] for t in got.terms), merged[tensor], atol=1e-12)
    alone = attribute(get_strategy("coordinate_median", {}), [{"b": d["b"]} for d in deltas], weights, 0)
    assert all(np.array_equal(t["b"], u["b"]) for t, u in zip(got.terms, alone.terms, strict=True))
