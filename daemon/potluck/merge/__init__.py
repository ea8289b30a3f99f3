"""Merge strategies: how a round's deltas become the one delta that makes the next version.

API (all a node needs is :func:`get_strategy`, with a manifest's ``strategy`` and ``strategy_args``)::

    strategy = get_strategy(name, args)          # StrategyError on unknown names or bad args
    merged = strategy.merge(deltas, weights, round_seed=seed)   # {tensor name: float64 array}
    new_state = next_state(base_state, merged, outer_lr)        # V_r + outer_lr * merged
    if supports_columns(strategy):                              # a reducer of one slice:
        part = strategy.merge_columns(deltas, weights, round_seed=seed, shapes=shapes, columns=cols)

``deltas`` are the round's updates (:class:`~potluck.updates.codec.Update`, ``SignedUpdate``, or
per-tensor mappings of :class:`~potluck.updates.codec.SparseTensor` or dense arrays), ``weights`` their
merge weights (``min(sample_count, weight_cap)``; the robust strategies ignore them), ``round_seed``
an integer every node knows (e.g. derived from the run id and round; only DARE draws from it).

**Determinism.** A strategy is a pure function: the same set of deltas, weights and seed give the
same output bytes on any machine. Inputs are put in a canonical order (sorted by a content hash, see
:mod:`potluck.merge.batch`), so the result does not depend on the order the updates arrived in;
arithmetic is float64; sums across deltas are explicit row-by-row additions in that order; sums over
coordinates use numpy's single-threaded add.reduce; no BLAS. ``mean``/``weighted_mean`` reproduce
potluck's fixed-point average exactly: ``next_state(V, weighted_mean.merge(...), lr)`` has the bytes of
``potluck.rounds.fixedpoint.local_average`` (and of the all-reduce path).

Strategies (``kind``):

=====================  ==========  =========================================================
name                   kind        rule (args)
=====================  ==========  =========================================================
``weighted_mean``      coordinate  sum(w u) / sum(w): the default (none)
``mean``               coordinate  unweighted mean (none)
``task_arithmetic``    coordinate  lambda * sum(u) (``lambda``)
``ties``               coordinate  trim to top-k%, elect sign, disjoint mean (``k``, ``lambda``)
``dare``               coordinate  seeded drop p, rescale 1/(1-p), weighted mean (``p``, ``lambda``)
``trimmed_mean``       coordinate  drop b = floor(beta n) each end (``beta``, ``sparse``, ``min_support``)
``coordinate_median``  coordinate  median (``sparse``, ``min_support``)
``norm_filter``        coordinate  drop far-out norms, clip, mean (``reject``, ``clip``)
``centered_clip``      vector      iterative L2 clipping around v (``tau``, ``iterations``, ``start``, ...)
``multi_krum``         vector      average the m best Krum scores (``f``, ``m``)
``geometric_median``   vector      Weiszfeld (``iterations``, ``eps``)
``history_clip``       vector      gate + clip around the agreed history's momentum (``beta``, ``clip``,
                                   ``reject``, ``min_cos``, ``bucket``, ``iterations``)
=====================  ==========  =========================================================

**Where they can run.** A ``coordinate`` strategy computes coordinate j of the result from
coordinate j of the deltas only (TIES and DARE after a per-update step that needs only that update:
its top-k% trim, its seeded keep mask, which a node applies to each update it carries). So it can run
*inside* the all-reduce: the reducer of a slice combines the per-update values of its slice. (The
mean only needs the sum, which is why potluck's all-reduce sums contributions; the median, trimmed
mean and TIES need each update's values of the slice separately, i.e. participants send per-update
slices rather than their summed contribution.) A ``vector`` strategy needs whole vectors: L2 norms
of differences (centered_clip, geometric_median) or pairwise distances (multi_krum) sum over every
coordinate of every tensor, which no reducer of one slice sees; it must run where the round's updates
are gathered (every node that fetched all of the round's updates computes the same result alone,
like ``local_average``).

``merge_columns(deltas, weights, *, round_seed, shapes, columns)`` is that reducer's entry point:
``shapes`` is the model's layout (``{name: shape}``, flattened in sorted-name order, C order within a
tensor), ``columns`` the sorted, unique int64 flat indices of the slice; it returns the float64
values of the merge at those indices, **bitwise equal** to ``merge`` flattened in that layout (0 for
a tensor no delta names). It builds only the window's columns of the batch
(:func:`~potluck.merge.batch.make_batch` with ``columns``: O(total nnz * log + n * len(columns)),
sparse updates are never densified) and the canonical row order is the one of the full merge. TIES
decides each update's top-k% trim on the whole update (its sparse form) and keeps the survivors in
the window; DARE draws each tensor's keep mask only over the span of the window's columns in it.
Every built-in ``coordinate`` strategy has it; a vector strategy raises :class:`StrategyError`.
:func:`supports_columns` says whether a strategy can: a third-party ``coordinate`` strategy without
``merge_columns`` (or a :class:`BaseStrategy` subclass without ``windowed = True``) counts as a
vector strategy and is merged where the updates are gathered.

``history_clip`` is the recommended robust strategy where the round's updates are gathered
(bench/robust.py, 3 seeds, 2 attackers of 8: within 2 points of honest-only under every attack of
bench/attacks.py but label flip, adaptive attackers that sit just under a rule's thresholds
included). ``norm_filter`` is the robust choice for a merge sliced inside the all-reduce: a
coordinate strategy after a per-round step that needs each update's norm, which every node holding
the round's updates computes
(:mod:`potluck.merge.norm_filter`); an attacker that stays under its norm cut reverses it.

``history_clip`` (:mod:`potluck.merge.history`) is history-aware: it sets ``history_rounds`` and its
``merge`` also takes ``context=RoundContext(...)`` (:mod:`potluck.merge.context`: the agreed merged
steps of the last rounds, the authors, the digest of the round's update ids), so it judges each
delta against where the model has been moving; every node derives the context from committed
versions and agreed entries, so it merges bit for bit alike.

Sparse-aware robust aggregation (the default of ``coordinate_median`` and ``trimmed_mean``, and of
centered_clip's median start) is described in :mod:`potluck.merge.robust`.

**Who moved the merge** (`potluck blame`): :func:`potluck.merge.attribution.attribute` splits a merge
into one term per delta that add up to it, by each built-in's exact rule (``attribute_batch``) or, for
any other strategy, the projection rule (:mod:`potluck.merge.attribution`).

Third-party strategies: declare an entry point in group ``"potluck.strategies"``
(``name = "package.module:factory"``, ``factory(args) -> Strategy``); ``get_strategy`` also takes
``"package.module:factory"`` directly. Built-in names cannot be shadowed.
"""

from potluck.merge.base import KINDS, Args, BaseStrategy, Strategy, StrategyError, supports_columns
from potluck.merge.batch import Batch, Delta, make_batch
from potluck.merge.grouped import Grouped, run_strategy
from potluck.merge.linear import next_state
from potluck.merge.registry import BUILTINS, ENTRY_POINT_GROUP, available_strategies, get_strategy

DEFAULT_STRATEGY = "weighted_mean"

__all__ = [
    "BUILTINS",
    "DEFAULT_STRATEGY",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "Args",
    "BaseStrategy",
    "Batch",
    "Delta",
    "Grouped",
    "Strategy",
    "StrategyError",
    "available_strategies",
    "get_strategy",
    "make_batch",
    "next_state",
    "run_strategy",
    "supports_columns",
]
