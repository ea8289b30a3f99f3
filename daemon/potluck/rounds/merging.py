"""One round's merge as a pure function of its base, its updates and their weights (pure).

What the gathered placement computes (engine/gathered.py) and what `potluck verify` recomputes from the
stored updates. The all-reduce and sliced placements give the same bytes: the weighted mean through
potluck's fixed point (rounds/fixedpoint.py), a coordinate strategy through ``merge_columns`` (merge/).

A history-aware strategy (``history_rounds = N > 0``, merge/context.py) also gets the round's
:class:`~potluck.merge.context.RoundContext`: the counted updates' authors, the merged steps of the last N
commits of the chain that ends at the round's base (:func:`history_chain` names their versions, the
caller loads them: engine/history.py on a live node, vcs/replay.py in `potluck verify`) and the digest
of the round's update ids. Such a strategy merges only where the updates are gathered (:func:`run_merge`).

A run that names a probe set (the manifest's ``probe``, potluck.merge.probe) has every keeper score the
round's counted updates on it before the strategy (:func:`probe_round`): the updates the probe rule
drops weigh 0 in the merge, as an update on probation does (listed in the commit, not merged, not in
its total weight), so `potluck verify` replays the same drops from the stored updates. Such a run merges
gathered only: every keeper needs every update to score it. Where the probe keeps a per-author record
(potluck.merge.record), the round takes the record before it (``record``: the caller reads it from the
commit that made V_r, engine/history.py on a live node, vcs/replay.py in `potluck verify`) and yields
its relative scores by author, from which the caller makes the record its commit names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from potluck.groups import GroupRules
from potluck.manifest import Manifest
from potluck.merge import (
    DEFAULT_STRATEGY,
    Grouped,
    Strategy,
    StrategyError,
    next_state,
    run_strategy,
    supports_columns,
)
from potluck.merge.batch import InputError, make_batch
from potluck.merge.context import RoundContext, entries_digest, step_between
from potluck.merge.probe import LOSS_CAP, ProbeError, ProbeRule
from potluck.merge.record import round_scores
from potluck.rounds import fixedpoint
from potluck.updates.codec import SignedUpdate

__all__ = [
    "PROBE_REASONS", "Excluded", "HistoryGap", "RunMerge", "damping", "history_chain", "history_rounds",
    "history_steps", "merge_round", "probe_round", "round_seed", "run_merge",
]  # fmt: skip

MAX_HISTORY_ROUNDS = 64  # earlier versions a strategy may ask for: each is a whole model in memory
# why the probe rule dropped an update, in words its author can act on (status, the log)
PROBE_REASONS = {
    "probe_worse": "the merge scores better on the run's public probe set without it: check that the "
    "contributor's labels and data match the task's (a label flip or another class order looks like this)",
    "probe_overflow": "with it the model's loss on the probe set is not finite: an update far too large",
}


class HistoryGap(Exception):
    """The chain of commits before a round cannot be followed here: no commit of ``version`` is known."""

    def __init__(self, version: str) -> None:
        super().__init__(f"no commit of version {version[:16]} is known here")
        self.version = version


def round_seed(run_id: str, round_: int) -> int:
    """The round's seed for randomized strategies (DARE): the same on every node."""
    return int.from_bytes(hashlib.sha256(f"{run_id}/{round_}".encode()).digest()[:8], "little")


def history_rounds(strategy: Strategy | None) -> int:
    """How many earlier merged steps ``strategy`` merges with (0: none; the weighted mean never)."""
    n = getattr(strategy, "history_rounds", 0) if strategy is not None else 0
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_HISTORY_ROUNDS:
        name = getattr(strategy, "name", type(strategy).__name__)
        raise StrategyError(f"{name}: history_rounds must be an int in [0, {MAX_HISTORY_ROUNDS}], got {n!r}")
    return n


@dataclass(frozen=True)
class RunMerge:
    """How a run merges: its strategy (None: the weighted mean through the fixed point), whether that is
    the weighted mean, whether it can merge a window of coordinates, and the history it needs."""

    strategy: Strategy
    mean: bool
    coordinate: bool
    history: int
    probe: ProbeRule | None = None  # the run's probe set and cut (None: it names none)

    @property
    def merging(self) -> Strategy | None:
        """What :func:`merge_round` takes: None for the weighted mean."""
        return None if self.mean else self.strategy

    @property
    def keeps_record(self) -> bool:
        """Whether the run's probe keeps a per-author record (its commits name it)."""
        return self.probe is not None and self.probe.decay > 0

    @property
    def spread_mean(self) -> bool:
        """Whether the merge may run as the weighted mean's all-reduce or dense path (placement's
        ``mean``): not with a probe, which every keeper runs on the gathered updates."""
        return self.mean and self.probe is None


def run_merge(strategy: str, args: Mapping, rules: GroupRules, probe: ProbeRule | None = None) -> RunMerge:
    """The merge of a run with ``strategy`` (``args``), parameter groups ``rules`` and probe rule ``probe``
    (potluck.tasks.probing), as the manifest check at `potluck init`, the node and `potluck verify` all
    read it. A history-aware strategy, or any with a probe, is never ``coordinate``: a reducer of one slice
    would merge without the history, or without scoring the whole updates (gathered only)."""
    s = run_strategy(strategy, args, rules)
    history = history_rounds(s)
    mean = strategy == DEFAULT_STRATEGY and not isinstance(s, Grouped)
    return RunMerge(s, mean, supports_columns(s) and history == 0 and probe is None, history, probe)


@dataclass(frozen=True)
class Excluded:
    """An update the probe rule dropped: why (a key of :data:`PROBE_REASONS`), its score and the cut."""

    reason: str
    score: float
    cut: float


def probe_round(
    base: Mapping[str, np.ndarray],
    weighted: Sequence[tuple[int, SignedUpdate]],
    probe: ProbeRule,
    outer_lr: float,
    record: Mapping[str, float] | None = None,
    scores: dict[str, float] | None = None,
) -> tuple[list[tuple[int, SignedUpdate]], dict[str, Excluded]]:
    """``weighted`` with the updates ``probe`` drops at weight 0, and those updates (id -> why). Only the
    counted updates (weight > 0) are scored; with fewer than 3 the rule may drop none: nothing is scored.
    ``record``: author -> its record before the round (a positive one is judged by the strict cut);
    ``scores``, if given, gets the round's relative scores by author (potluck.merge.record)."""
    # scored in update-id order: probe_keep breaks a tie of scores by index, alike on every node
    counted = sorted(
        (i for i, (w, _) in enumerate(weighted) if w > 0), key=lambda i: weighted[i][1].update_id
    )
    if len(counted) < 3:
        return list(weighted), {}
    shapes = {k: tuple(np.shape(v)) for k, v in base.items()}
    try:
        batch = make_batch([weighted[i][1] for i in counted], [1.0] * len(counted), shapes=shapes)
    except InputError as e:
        raise ProbeError(f"probe: {e}") from None
    dense: list[dict[str, np.ndarray]] = [{} for _ in counted]
    for row, given in enumerate(batch.order):
        dense[given] = batch.split(batch.matrix[row])
    authors = [weighted[i][1].update.author.hex() for i in counted]
    trusted = {k for k, a in enumerate(authors) if (record or {}).get(a, 0.0) > 0.0}
    drops, judged = probe.judge(base, dense, outer_lr, trusted)
    if scores is not None:
        scores.update(round_scores(authors, judged))
    out, excluded = list(weighted), {}
    for k, (score, cut) in drops.items():
        _, u = weighted[counted[k]]
        out[counted[k]] = (0, u)
        reason = "probe_overflow" if score <= -LOSS_CAP / 2 else "probe_worse"
        excluded[u.update_id] = Excluded(reason, score, cut)
    return out, excluded


def damping(strategy: Strategy | None, weighted: Sequence[tuple[int, SignedUpdate]]) -> dict[str, float]:
    """update id -> the factor ``strategy``'s last merge of ``weighted`` scaled it by, where below 1.

    Read from the strategy's optional ``last_factors``, set by its ``merge``: one number in [0, 1] per
    counted delta, in the order they were passed (that of ``RoundContext.authors``; 0: dropped). {} when
    the strategy has none or gives something else: a strategy that does not say so is never damping."""
    factors = getattr(strategy, "last_factors", None) if strategy is not None else None
    counted = [u for w, u in weighted if w > 0]
    if not isinstance(factors, Sequence) or len(factors) != len(counted):
        return {}
    if not all(isinstance(f, int | float) and 0.0 <= f <= 1.0 for f in factors):
        return {}
    return {u.update_id: float(f) for u, f in zip(counted, factors, strict=True) if f < 1.0}


def history_chain(base: str, genesis: str, parent_of: Callable[[str], str | None], rounds: int) -> list[str]:
    """``[V_r = base, V_{r-1}, ...]``: the versions of the last ``rounds`` commits of the chain that ends
    at ``base``, following each commit's parent (``parent_of(v)``: the parent of the commit that changed
    the model to ``v``, None when unknown; a commit that left the version as it was made no step and is
    not one of them), at most ``rounds + 1`` of them, fewer when the chain reaches the genesis.
    :class:`HistoryGap` when a parent is unknown."""
    chain = [base]
    while len(chain) <= rounds and chain[-1] != genesis:
        parent = parent_of(chain[-1])
        if parent is None or parent == chain[-1]:
            raise HistoryGap(chain[-1])
        chain.append(parent)
    return chain


def history_steps(states: Sequence[Mapping[str, np.ndarray]], outer_lr: float) -> tuple[dict, ...]:
    """The merged steps, newest first, of ``states`` = the versions of :func:`history_chain`, in order."""
    return tuple(step_between(states[k + 1], states[k], outer_lr) for k in range(len(states) - 1))


def merge_round(
    base: Mapping[str, np.ndarray],
    layout: fixedpoint.Layout,
    weighted: Sequence[tuple[int, SignedUpdate]],
    manifest: Manifest,
    strategy: Strategy | None,
    seed: int,
    extra: Mapping[str, np.ndarray] | None = None,
    previous: Sequence[Mapping[str, np.ndarray]] | None = None,
    probe: ProbeRule | None = None,
    excluded: dict[str, Excluded] | None = None,
    record: Mapping[str, float] | None = None,
    scores: dict[str, float] | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """V_{r+1} and the total weight merged, from V_r and ``weighted`` = [(merge weight, SignedUpdate)].

    ``strategy`` None is the weighted mean: the updates are summed straight into the fixed point (an
    update of weight 0, on probation, adds nothing). Any other strategy merges the updates that weigh
    something as its own batch (strategies that ignore weights must not see the others). ``extra``: a
    revert's float64 step (vcs/revert.py), weighted mean only. ``previous``: the merged steps before the
    round (:func:`history_steps`), required by a history-aware strategy and passed in its context with
    the counted updates' authors and the digest of every update id of the round (sorted: the commit's
    order). ``probe``: the run's probe rule, run first (:func:`probe_round`, with ``record`` and
    ``scores``); the updates it drops are added to ``excluded`` when given.
    """
    if probe is not None:
        weighted, dropped = probe_round(base, weighted, probe, manifest.outer_lr, record, scores)
        if excluded is not None:
            excluded.update(dropped)
    if strategy is None:
        c = fixedpoint.contribution(layout, weighted)
        new_state = fixedpoint.next_version(dict(base), layout, c.q, c.weight, manifest.outer_lr, extra)
        return new_state, c.weight
    if extra:
        raise ValueError("a revert applies to weighted-mean runs only")
    counted = [(w, u) for w, u in weighted if w > 0]
    if not counted:
        return next_state(dict(base), {}, manifest.outer_lr), 0
    deltas, weights = [u for _, u in counted], [float(w) for w, _ in counted]
    if history_rounds(strategy):
        if previous is None:
            raise ValueError(f"{strategy.name} merges with the run's history: pass the previous steps")
        context = RoundContext(
            authors=tuple(u.update.author.hex() for u in deltas),
            previous=tuple(previous),
            digest=entries_digest(sorted(u.update_id for _, u in weighted)),
        )
        merged = strategy.merge(deltas, weights, round_seed=seed, context=context)  # type: ignore[call-arg]
    else:
        merged = strategy.merge(deltas, weights, round_seed=seed)
    return next_state(dict(base), merged, manifest.outer_lr), sum(w for w, _ in counted)
