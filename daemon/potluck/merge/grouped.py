"""A run's merge strategy once its parameter groups (potluck.groups) pick different strategies per tensor.

:func:`run_strategy` gives the manifest's strategy itself when no group names another one. Otherwise
it gives :class:`Grouped`: every update is cut by tensor into the groups' parts, each strategy merges
its part of *every* update (an update that touches none of a group's tensors is a zero row there,
as it is for a single strategy, so the weights and the canonical order are those of the whole
round), and the results are joined. A group's strategy runs with its default arguments; the
manifest's ``strategy_args`` are for the manifest's ``strategy``.

A group whose strategy is history-aware (``history_rounds``, merge/context.py) gets the round's context
with the previous steps cut to its own tensors; ``Grouped`` asks for the most history any group needs.

``Grouped`` is a ``vector`` strategy: it has no ``merge_columns``, so its merge runs where the
round's updates are gathered (rounds/placement.py allows only ``gathered`` for it). Supporting
per-group strategies inside the sliced and all-reduce placements would need every reducer to merge
a window that spans groups with different rules; gathering costs no extra bytes (every keeper
fetches every update anyway), only memory for the non-mean groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from potluck.groups import GroupRules
from potluck.merge.base import Strategy
from potluck.merge.batch import Delta, delta_tensors
from potluck.merge.context import RoundContext
from potluck.merge.registry import get_strategy

__all__ = ["Grouped", "run_strategy"]


class Grouped:
    """The merge of one strategy per group of tensors; see the module doc."""

    name = "grouped"
    kind: Literal["coordinate", "vector"] = "vector"

    def __init__(self, default: str, strategies: Mapping[str, Strategy], rules: GroupRules) -> None:
        self._default, self._strategies, self._rules = default, dict(strategies), rules
        self.args: dict[str, Any] = {"groups": [r.text() for r in rules.rules], "default": default}
        self.history_rounds = max(
            (getattr(s, "history_rounds", 0) for s in self._strategies.values()), default=0
        )

    def strategy_of(self, tensor: str) -> str:
        rule = self._rules.rule_for(tensor)
        return rule.strategy if rule is not None and rule.strategy else self._default

    def merge(
        self,
        deltas: Sequence[Delta],
        weights: Sequence[float],
        *,
        round_seed: int,
        context: RoundContext | None = None,
    ) -> dict[str, np.ndarray]:
        merged: dict[str, np.ndarray] = {}
        for strategy, part in self.parts(deltas):
            if context is not None and getattr(strategy, "history_rounds", 0):
                names = {n for d in part for n in d}
                own = tuple({n: t for n, t in step.items() if n in names} for step in context.previous)
                cut = RoundContext(context.authors, own, context.digest)
                merged |= strategy.merge(part, weights, round_seed=round_seed, context=cut)  # type: ignore[call-arg]
            else:
                merged |= strategy.merge(part, weights, round_seed=round_seed)
        return merged

    def parts(self, deltas: Sequence[Delta]) -> list[tuple[Strategy, list[dict[str, Any]]]]:
        """Per group strategy that has tensors here: it, and every delta cut to its tensors (in order)."""
        parts: dict[str, list[dict[str, Any]]] = {s: [{} for _ in deltas] for s in self._strategies}
        for i, delta in enumerate(deltas):
            for name, _, t in delta_tensors(delta):
                parts[self.strategy_of(name)][i][name] = t
        # disjoint tensors: the order only fixes the work's order
        return [(self._strategies[s], parts[s]) for s in sorted(parts) if any(parts[s])]


def run_strategy(strategy: str, args: Mapping[str, Any], rules: GroupRules) -> Strategy:
    """The strategy a run merges with: ``strategy`` (with ``args``), or :class:`Grouped` when a group
    names another. :class:`potluck.merge.StrategyError` for an unknown name or bad arguments."""
    default = get_strategy(strategy, args)
    if not rules.split_strategies(strategy):
        return default
    strategies: dict[str, Strategy] = {strategy: default}
    for rule in rules.rules:
        if rule.strategy and rule.strategy not in strategies:
            strategies[rule.strategy] = get_strategy(rule.strategy, {})
    return Grouped(strategy, strategies, rules)
