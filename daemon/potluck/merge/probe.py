"""Probe-set evidence for a merge (issue 15): score each update by what the round's merge loses on
a small public probe set without it, and drop the updates the merge is better off without (pure).

A label flipper's update has an honest norm and cosines near 0 with the others, like a contributor
with classes of its own, so no rule over the round's updates alone tells them apart
(bench/README.md). A run that opts in names a small labelled probe set by the SHA-256 of its bytes
(:meth:`ProbeSet.digest`); every keeper then scores the round's n updates the same way:

* ``L(state)``: the probe loss, the mean over the classes present in the probe set of each class's
  mean cross-entropy (class-balanced);
* the **score** of update i is leave-one-out: ``L(base + scale * mean of the others) -
  L(base + scale * mean of all n)``: positive when the merge is better with it. Scoring an update
  alone does not work on non-IID data: each honest update shifts the class prior towards its own
  classes and raises the loss on every other class, and a label flipper's raises the prior of the
  classes it relabels to, so both look alike (on digits, alone, honest 0.3-2.5 and flippers 0.1-0.5
  as the best class's gain); in the mean the honest shifts balance and what a flipper does to the
  classes it relabels stands out (bench/README.md);
* :func:`probe_keep` drops the update with the lowest score while it is below the cut, ``-frac``
  (default 0.5) times the lower-median absolute score of the updates still kept (or ``-floor`` when
  lower: default 0, off; IID honest updates' scores are noise around 0, and a cut relative to that
  noise drops some of them), and scores the
  rest again after each drop; never more than ``(n - 1) // 2`` of the n, so a probe set that
  disagrees with most contributors cannot empty a round. Cost per keeper and round: ``n + 1``
  forward passes over the probe set per scoring, one scoring more per drop. The kept updates then go to
  the run's strategy (e.g. ``history_clip``); the scores judge them under a plain mean, not under
  that strategy;
* :class:`~potluck.merge.record.AuthorRecord` (a run opts in with ``record = DECAY``): each
  author's decayed sum of its relative scores over the rounds merged before; an author whose record
  is positive is judged by a looser cut (``strict``), so an honest update that scores badly in one
  round is kept while a repeat offender is judged by the usual one. Each commit of such a run names
  the record after its round (rounds/commit.py), so every keeper, and `potluck verify`, starts a round
  from the same record (potluck.merge.record).

Determinism: every keeper must get the same scores bit for bit, whatever order the updates arrived
in. The updates are summed in a canonical order (by the SHA-256 of each one's float64 bytes), so
the sum and each "all but one" (the sum minus that update) are the same bytes under any permutation.
The model is the built-in tasks' MLP (``layers`` applied in order, ReLU between) in float64 numpy:
each product an exact IEEE multiply, each dot product numpy's ``add.reduce`` over a contiguous last
axis (a fixed pairwise order; no BLAS, whose kernels differ between machines and thread counts);
the softmax's ``exp`` and ``log`` are Python's ``math`` (scalar libm: numpy's SIMD-dispatched
``exp`` and ``log`` may differ in the last bit between CPUs), the sums over classes and samples
``math.fsum`` (correctly rounded, so order-free). Not covered: a libm that rounds ``exp`` / ``log``
differently on another machine (glibc's are correctly rounded in practice), a numpy whose
``add.reduce`` changed its order (the same assumption as :mod:`potluck.merge.batch`). So that a
last-bit difference left anyway decides less, :func:`probe_filter` compares the scores on a grid of
2**-30 (:func:`quantize`); a score within one ulp of a grid point's rounding edge could still land on
either side on two machines, and then their merges differ and the round gets no quorum of equal
signatures (a failed round, never two silently different models; with quorum 1, the fork choice). A
probe loss that is not finite or above :data:`LOSS_CAP` counts as that cap, so it scores like any other.

A run opts in with the manifest's ``probe`` table (:func:`probe_args`: the set's hash ``set``, the
cut's ``frac`` and ``floor``, the task's ``per_class``, and for a record its ``record`` and
``strict``); :class:`ProbeRule` is what the merge runs (rounds/merging.py).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from potluck.merge.record import RECORD_DEFAULTS, record_args

__all__ = [
    "LOSS_CAP",
    "PROBE_DEFAULTS",
    "ProbeError",
    "ProbeRule",
    "ProbeSet",
    "mlp_class_losses",
    "probe_args",
    "probe_cut",
    "probe_filter",
    "probe_keep",
    "probe_loss",
    "probe_scores",
    "quantize",
]

_DOMAIN = b"potluck-probe-v1\n"
_CHUNK = 16  # probe samples per forward block: bounds the (chunk, out, in) product array
LOSS_CAP = 1e30  # a probe loss above it (inf, NaN: an overflowing model) counts as this
_GRID = float(1 << 30)  # scores are compared as multiples of 2**-30 (:func:`quantize`)
PROBE_DEFAULTS: dict[str, Any] = {"floor": 0.0, "frac": 0.5, "per_class": 10}
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ProbeError(ValueError):
    """A malformed probe set, or one whose bytes do not hash to the name the run gave."""


@dataclass(frozen=True)
class ProbeSet:
    """Probe features ``x`` (n, d) float32 and labels ``y`` (n,) int64 in ``[0, classes)``."""

    x: np.ndarray
    y: np.ndarray
    classes: int

    def __post_init__(self) -> None:
        x, y = np.asarray(self.x), np.asarray(self.y)
        if x.dtype != np.float32 or x.ndim != 2 or y.dtype != np.int64 or y.shape != (x.shape[0],):
            raise ProbeError(f"probe set: x is (n, d) float32 and y (n,) int64, got {x.shape} {x.dtype}, "
                             f"{y.shape} {y.dtype}")  # fmt: skip
        if x.shape[0] == 0 or self.classes < 1 or (y < 0).any() or (y >= self.classes).any():
            raise ProbeError(f"probe set: needs samples with labels in [0, {self.classes})")
        if not np.isfinite(x).all():
            raise ProbeError("probe set: features are not finite")

    def digest(self) -> str:
        """SHA-256 (hex) of the set's canonical bytes: shapes, classes, little-endian x then y."""
        h = hashlib.sha256(_DOMAIN)
        h.update(np.array([*self.x.shape, self.classes], dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.x, dtype="<f4").tobytes())
        h.update(np.ascontiguousarray(self.y, dtype="<i8").tobytes())
        return h.hexdigest()

    @classmethod
    def named(cls, x: np.ndarray, y: np.ndarray, classes: int, digest: str) -> ProbeSet:
        """The probe set of these bytes, refused unless they hash to ``digest`` (the manifest's name)."""
        probe = cls(np.asarray(x), np.asarray(y), classes)
        got = probe.digest()
        if got != digest:
            raise ProbeError(f"probe set hashes to {got[:16]}..., the run names {str(digest)[:16]}...")
        return probe


def _forward(state: Mapping[str, np.ndarray], layers: Sequence[str], x: np.ndarray) -> np.ndarray:
    h = np.asarray(x, dtype=np.float64)
    for i, name in enumerate(layers):
        w = np.ascontiguousarray(state[f"{name}.weight"], dtype=np.float64)  # (out, in)
        b = np.asarray(state[f"{name}.bias"], dtype=np.float64)
        h = np.add.reduce(np.ascontiguousarray(h[:, None, :] * w[None, :, :]), axis=2) + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def mlp_class_losses(state: Mapping[str, np.ndarray], layers: Sequence[str], probe: ProbeSet) -> list[float]:
    """Mean cross-entropy of the MLP ``state`` on the probe samples of each class (0 for a class the
    probe set lacks), computed deterministically (see the module doc)."""
    per_class: list[list[float]] = [[] for _ in range(probe.classes)]
    for lo in range(0, probe.x.shape[0], _CHUNK):
        logits = _forward(state, layers, probe.x[lo : lo + _CHUNK])
        if logits.shape[1] != probe.classes:
            raise ProbeError(f"probe set: the model has {logits.shape[1]} outputs, the set {probe.classes}")
        for row, label in zip(logits.tolist(), probe.y[lo : lo + _CHUNK].tolist(), strict=True):
            top = max(row)
            if not math.isfinite(top):
                per_class[label].append(math.inf)
                continue
            lse = top + math.log(math.fsum(math.exp(z - top) for z in row))
            per_class[label].append(lse - row[label])
    return [math.fsum(v) / len(v) if v else 0.0 for v in per_class]


def probe_loss(state: Mapping[str, np.ndarray], layers: Sequence[str], probe: ProbeSet) -> float:
    """The class-balanced probe loss: the mean over the classes present of their mean cross-entropy."""
    losses = mlp_class_losses(state, layers, probe)
    present = sorted(set(probe.y.tolist()))
    loss = math.fsum(losses[c] for c in present) / len(present)
    return loss if loss < LOSS_CAP else LOSS_CAP  # NaN too: the comparison is False


def _key(delta: Mapping[str, np.ndarray]) -> bytes:
    h = hashlib.sha256()
    for name in sorted(delta):
        h.update(name.encode() + b"\0" + np.ascontiguousarray(delta[name], dtype="<f8").tobytes())
    return h.digest()


def probe_scores(
    base: Mapping[str, np.ndarray],
    deltas: Sequence[Mapping[str, np.ndarray]],
    layers: Sequence[str],
    probe: ProbeSet,
    scale: float = 1.0,
) -> list[float]:
    """Each delta's leave-one-out score (see the module doc), in the order given; 0 for a lone delta.
    A tensor a delta lacks is 0 in it; a delta naming a tensor ``base`` lacks is refused."""
    n = len(deltas)
    dense = []
    for d in deltas:
        extra = sorted(set(d) - set(base))
        if extra:
            raise ProbeError(f"probe scores: a delta names tensors the model lacks: {extra}")
        dense.append(
            {k: np.asarray(d[k], np.float64) if k in d else np.zeros(np.shape(v)) for k, v in base.items()}
        )
    if n < 2:
        return [0.0] * n
    for d in dense:
        if not all(np.isfinite(v).all() for v in d.values()):
            raise ProbeError("probe scores: a delta is not finite")
    total = {k: np.zeros(np.shape(v), np.float64) for k, v in base.items()}
    for i in sorted(range(n), key=lambda i: _key(dense[i])):  # canonical order: permutation-free sums
        for k in total:
            total[k] += dense[i][k]
    origin = {k: np.asarray(v, np.float64) for k, v in base.items()}
    merged = probe_loss({k: origin[k] + (scale / n) * total[k] for k in origin}, layers, probe)
    return [
        probe_loss({k: origin[k] + (scale / (n - 1)) * (total[k] - d[k]) for k in origin}, layers, probe)
        - merged
        for d in dense
    ]


def probe_cut(scores: Sequence[float], frac: float = 0.5, floor: float = 0.0) -> float:
    """The score below which :func:`probe_keep` drops: ``-frac`` x the lower median absolute score, or
    ``-floor`` (the probe loss's units) when that is lower: scores of near-alike honest updates are
    noise, and a cut relative to noise drops some of them (bench/README.md)."""
    if not scores:
        return 0.0
    if any(math.isnan(s) for s in scores):
        raise ProbeError("probe scores: a score is NaN")
    return -max(frac * sorted(abs(s) for s in scores)[(len(scores) - 1) // 2], floor)


def probe_keep(
    n: int,
    scores_of: Callable[[list[int]], list[float]],
    frac: float = 0.5,
    dropped: list[tuple[int, float, float]] | None = None,
    floor: float = 0.0,
    trusted: Collection[int] = (),
    judged: dict[int, float] | None = None,
    strict: float = math.inf,
) -> list[int]:
    """Indices (ascending) of the n updates to keep. ``scores_of(kept)``: the scores of the updates
    ``kept`` (indices) when only they are merged. While the lowest score of the kept updates is below
    :func:`probe_cut` of their scores, that update is dropped (ties: the later index) and the rest are
    scored again without it, never more than ``(n - 1) // 2`` of the n. Rescoring because
    leave-one-out scores interact: with several flippers an honest owner of the classes they relabel
    to can look bad until they are gone, and a flipper whose harm is masked by another's shows once
    that one is gone (bench/README.md measures one-shot and fixed-cut variants: worse). ``trusted``:
    indices (authors with a positive :class:`AuthorRecord`) judged by the cut of ``frac = strict``
    instead (default inf: never dropped). ``dropped``, if given, gets
    ``(index, score, cut)`` of each drop, in order; ``judged``, if given, each update's last score over
    the lower-median absolute score of that scoring (0 when that median is 0): what an
    :class:`AuthorRecord` adds up."""
    kept = list(range(n))
    scores = scores_of(kept)
    cut = probe_cut(scores, frac, floor)
    while n - len(kept) < (n - 1) // 2:  # probe_cut has refused NaN scores
        lenient = probe_cut(scores, strict, floor) if trusted else cut
        cuts = [lenient if i in trusted else cut for i in kept]
        below = [t for t in range(len(kept)) if scores[t] < cuts[t]]
        if not below:
            break
        worst = min(below, key=lambda t: (scores[t], -kept[t]))
        if dropped is not None:
            dropped.append((kept[worst], scores[worst], cuts[worst]))
        if judged is not None:
            judged[kept[worst]] = _relative(scores[worst], scores)
        del kept[worst]
        scores = scores_of(kept)
        cut = probe_cut(scores, frac, floor)
    if judged is not None:
        judged.update((i, _relative(s, scores)) for i, s in zip(kept, scores, strict=True))
    return kept


def _relative(score: float, scores: Sequence[float]) -> float:
    med = sorted(abs(s) for s in scores)[(len(scores) - 1) // 2] if scores else 0.0
    return score / med if med > 0.0 else 0.0


def quantize(score: float) -> float:
    """``score`` rounded to the nearest multiple of 2**-30: a power-of-two scale and ``round`` (exact;
    the grid point is exact below 2**23 in magnitude, correctly rounded above: the same bytes anywhere)."""
    return round(score * _GRID) / _GRID


def probe_filter(
    base: Mapping[str, np.ndarray],
    deltas: Sequence[Mapping[str, np.ndarray]],
    layers: Sequence[str],
    probe: ProbeSet,
    scale: float = 1.0,
    frac: float = 0.5,
    dropped: list[tuple[int, float, float]] | None = None,
    floor: float = 0.0,
    trusted: Collection[int] = (),
    judged: dict[int, float] | None = None,
    strict: float = math.inf,
) -> list[int]:
    """:func:`probe_keep` with :func:`probe_scores` (quantized): the indices (ascending) of the deltas
    to merge; ``dropped``, ``trusted``, ``judged`` and ``strict`` as :func:`probe_keep`'s."""

    def scores_of(kept: list[int]) -> list[float]:
        return [quantize(s) for s in probe_scores(base, [deltas[i] for i in kept], layers, probe, scale)]

    return probe_keep(len(deltas), scores_of, frac, dropped, floor, trusted, judged, strict)


def probe_args(values: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's ``probe`` table, checked, defaults filled in: ``set`` (the probe set's
    :meth:`ProbeSet.digest`), ``frac`` and ``floor`` (:func:`probe_cut`'s, in (0, 10] and [0, 100]) and
    ``per_class`` (probe
    samples per class the task hands, in [1, 10000]); {} stays {} (no probe)."""
    if not isinstance(values, Mapping):
        raise ProbeError("probe must be a table: set = HASH, frac = X, floor = Y, per_class = N")
    if not values:
        return {}
    unknown = sorted(set(values) - {"set", *PROBE_DEFAULTS, *RECORD_DEFAULTS})
    if unknown:
        raise ProbeError(
            f"probe: unknown key(s) {unknown}; it takes set, frac, floor, per_class, record, strict"
        )
    if "set" not in values:
        raise ProbeError("probe needs set = HASH, the probe set's SHA-256 (`potluck init --probe` writes it)")
    out = PROBE_DEFAULTS | dict(values)
    if not isinstance(out.get("set"), str) or not _HEX64.fullmatch(out["set"]):
        got = str(out.get("set"))[:80]
        raise ProbeError(f"probe.set must be the probe set's SHA-256 (64 lowercase hex), got {got!r}")
    frac = out["frac"]
    if type(frac) not in (int, float) or not 0 < frac <= 10:
        raise ProbeError(f"probe.frac must be a number in (0, 10], got {frac!r}")
    if type(out["per_class"]) is not int or not 1 <= out["per_class"] <= 10_000:
        raise ProbeError(f"probe.per_class must be an integer in [1, 10000], got {out['per_class']!r}")
    floor = out["floor"]
    if type(floor) not in (int, float) or not 0 <= floor <= 100:
        raise ProbeError(f"probe.floor must be a number in [0, 100], got {floor!r}")
    checked = {"floor": float(floor), "frac": float(frac), "per_class": out["per_class"], "set": out["set"]}
    try:
        return checked | record_args(RECORD_DEFAULTS | dict(values))
    except ValueError as e:
        raise ProbeError(str(e)) from None


@dataclass(frozen=True)
class ProbeRule:
    """A run's probe rule as the merge runs it: the named set, the model's ``layers``, the cut, and
    the record's ``decay`` (0: none) and ``strict`` cut."""

    probe: ProbeSet
    layers: tuple[str, ...]
    frac: float
    floor: float = 0.0
    decay: float = 0.0
    strict: float = 1.0

    def judge(
        self,
        base: Mapping[str, np.ndarray],
        deltas: Sequence[Mapping[str, np.ndarray]],
        scale: float,
        trusted: Collection[int] = (),
    ) -> tuple[dict[int, tuple[float, float]], dict[int, float]]:
        """(index -> (its score, the cut) of each delta :func:`probe_filter` drops, in drop order;
        index -> its relative score, ``judged``). ``trusted``: indices judged by the ``strict`` cut."""
        dropped: list[tuple[int, float, float]] = []
        judged: dict[int, float] = {}
        strict = self.strict if trusted else math.inf
        probe_filter(base, deltas, self.layers, self.probe, scale, self.frac, dropped, self.floor, trusted,
                     judged, strict)  # fmt: skip
        return {i: (score, cut) for i, score, cut in dropped}, judged

    def excluded(
        self, base: Mapping[str, np.ndarray], deltas: Sequence[Mapping[str, np.ndarray]], scale: float
    ) -> dict[int, tuple[float, float]]:
        """index -> (its score, the cut) of each delta :func:`probe_filter` drops, in drop order."""
        return self.judge(base, deltas, scale)[0]
