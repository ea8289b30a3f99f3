"""Who moved the merged delta: each update's term of a round's merge (`potluck blame`, pure).

``attribute(strategy, deltas, weights, round_seed)`` gives, per delta, ``{tensor: float64 array}``: its
term ``t_u`` of the merged delta ``D = strategy.merge(deltas, weights)``, with ``sum_u t_u = D`` up to
float rounding, and the rule used:

* ``exact``: the strategy decomposes its own result (``attribute_batch``, merge/base.py): the linear
  rules (``mean``: ``x_u / n``; ``weighted_mean``: ``w_u x_u / W``; ``task_arithmetic``: ``lambda x_u``;
  ``dare``: ``lambda w_u keep_u x_u / ((1 - p) W)``; ``ties``: ``lambda x'_u / c`` at the coordinates
  where u's trimmed value agrees with the elected sign, c of them there), ``norm_filter`` (``s_u x_u /
  kept``, its clip factor s_u, 0 when dropped), ``multi_krum`` (``x_u / m`` for the m chosen),
  ``coordinate_median`` and ``trimmed_mean`` (per coordinate, the values the location kept, each to the
  update that holds it: the one or two middle values of the multiset, halved when two, or the values
  between the trimmed ends over their count; times the sparse rule's ``m / n``; padded zeros add
  nothing; equal values go to the lower canonical row), ``centered_clip`` (the start's terms, the
  median's as above or ``x_u / n``, plus every step's ``c_u (x_u - v) / n`` with its clip factor
  ``c_u``), ``geometric_median`` (the result is ``sum_u a_u x_u`` with the last Weiszfeld step's
  ``a_u = inv_u / sum inv``: ``a_u x_u``);
* ``projection``: any other strategy (a third-party one, or one with no exact rule). Per tensor T, with
  ``p_u = <x_u[T], D[T]>`` (u's delta projected on the merged delta): ``t_u[T] = p_u / sum_v p_v *
  D[T]``. The terms add up to D[T]; an update's share of D[T] is its projection's share. Where
  ``sum_v p_v = 0`` (D[T] = 0, or a D[T] orthogonal to the round's deltas, as a history-aware strategy's
  momentum can be) D[T] is left unattributed (``None``'s entry).

A strategy that splits by parameter group (merge/grouped.py) is attributed group by group, each with its
own rule (the result names ``grouped:`` and the rules used).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from potluck.merge.base import Strategy
from potluck.merge.batch import Delta, make_batch
from potluck.merge.grouped import Grouped

__all__ = ["Attribution", "attribute", "projection"]

Terms = dict[str, np.ndarray]


class Attribution:
    """``terms[i]``: delta i's terms (``{}``: weight 0, or nothing of it); ``unattributed``: what of the
    merge no delta accounts for (``{}`` when the terms add up to it); ``rule``: how."""

    def __init__(self, terms: list[Terms], unattributed: Terms, rule: str) -> None:
        self.terms, self.unattributed, self.rule = terms, unattributed, rule


def projection(deltas: Sequence[Delta], weights: Sequence[float], merged: Terms) -> Attribution:
    """The projection rule (module doc) for any ``merged`` delta of ``deltas``."""
    batch = make_batch(deltas, weights)
    terms: list[Terms] = [{} for _ in deltas]
    left: Terms = {}
    for s in batch.slots:
        d = np.asarray(merged.get(s.name, np.zeros(s.shape)), dtype=np.float64).reshape(-1)
        x = batch.matrix[:, s.offset : s.offset + s.size]
        p = np.add.reduce(x * d, axis=1)  # deterministic, no BLAS
        total = float(np.add.reduce(p)) if len(p) else 0.0
        if total == 0.0:
            if np.any(d):
                left[s.name] = d.reshape(s.shape).copy()
            continue
        for row, given in enumerate(batch.order):
            terms[given][s.name] = (d * (float(p[row]) / total)).reshape(s.shape)
    return Attribution(terms, left, "projection")


def attribute(
    strategy: Strategy, deltas: Sequence[Delta], weights: Sequence[float], round_seed: int
) -> Attribution:
    """Each delta's term of ``strategy``'s merge of ``deltas`` (module doc)."""
    if isinstance(strategy, Grouped):
        out = Attribution([{} for _ in deltas], {}, "")
        rules = []
        for part_strategy, part in strategy.parts(deltas):
            got = attribute(part_strategy, part, weights, round_seed)
            for mine, theirs in zip(out.terms, got.terms, strict=True):
                mine |= theirs
            out.unattributed |= got.unattributed
            rules.append(f"{part_strategy.name} {got.rule}")
        out.rule = "grouped: " + ", ".join(rules)
        return out
    exact = getattr(strategy, "attribute", None)
    if callable(exact):
        terms = exact(deltas, weights, round_seed=round_seed)
        if terms is not None:
            return Attribution(terms, {}, "exact")
    return projection(deltas, weights, strategy.merge(deltas, weights, round_seed=round_seed))
