"""Byzantine contributors for bench/robust.py and the strategy tests: how attackers shape the deltas
they send.

Not shipped (potluck.merge only defends), and not in tests/ (the benches import nothing from there):
bench scripts import it as ``attacks`` (their own folder is on the path), tests as ``bench.attacks``.
Deltas here are dense ``{name: float array}``; the bench sends what these return through the real
codec (top-k, int8, signed).

* ``sign_flip``: the attacker's honest delta times ``-scale`` (x1000).
* ``random_direction``: Gaussian values on the same support, rescaled to ``scale`` times the honest
  delta's L2 norm (norm-matched x1000).
* ``flip_labels``: the attacker trains on labels ``y -> classes - 1 - y`` (label flip).
* ``ipm``: inner product manipulation (Xie et al. 2020), omniscient: ``-eps`` times the mean of
  the honest deltas of the round (eps 0.1: a small push against the honest direction that stays
  inside the honest spread; eps 100: a large one).
* ``Replay``: sends the first delta it ever produced again, every round (stale, re-signed on the
  current version, so only its content is old).

Adaptive attacks (issue 15): each is written against the rule it faces. The attackers collude, see
the round's honest deltas and the agreed history (the previous merged steps), and know the rule's code:
:func:`worst_of` runs the rule itself (``damage(candidate)``: the merge with every attacker sending
``candidate``, scored by its inner product with the honest mean; lower is worse for the model) on a
grid of candidates and sends the worst, so every threshold (norm_filter's norm cut, centered_clip's
tau, the trimmed mean's and the median's order statistics, history_clip's clip radius and direction
gate) is met from just inside.

* ``adaptive_ipm``: ``s * m * unit(c * unit(-h) + sqrt(1 - c^2) * unit(noise))`` over scales s (m =
  the median honest norm, h the honest mean) and push shares c (1: plain IPM; below: the push hidden
  in norm-matched noise on the attacker's own support, each attacker its own, so that the deltas
  neither repeat nor disagree with the honest ones beyond a threshold); against a rule with a
  history gate the push is also tilted towards the last merged step;
* ``adaptive_sign_flip``: the same with the attackers' own deltas, summed, reversed as the push;
* ``min_max`` / ``min_sum`` (Shejwalkar & Houmansadr, NDSS 2021): ``h + gamma * p`` with
  ``p = -unit(h)``, gamma the largest whose maximum (min-max) or sum of squared (min-sum) distances to
  the honest deltas stays within the honest deltas' own largest; the rule then picks among
  ``gamma, gamma / 2, gamma / 4``;
* ``mimic`` (Karimireddy, He & Jaggi 2022): every attacker copies one honest contributor (the one
  farthest from the honest mean in round 0, kept ever after), over-weighting its classes and starving
  the others';
* ``alternating``: a colluding pair that takes turns: in round r attacker ``r % 2`` sends the
  adaptive IPM, the other its honest delta (against any rule that learns who misbehaved).

Against the probe-set rule (``potluck.merge.probe``, a probe set the attackers know):

* ``probe_flip``: a label flipper that also trains on the probe set (``boost``: the delta of the same
  local steps on the probe samples, correct labels) and sends ``flip + t * boost`` with the smallest
  t of ``PROBE_BOOSTS`` that the rule keeps (``probe_keep`` run on the round's deltas with the
  candidate as the codec will send it; the attackers choose in turn, each against the others'
  choices) (:func:`probe_flip`). Against a rule without the probe: a plain label flip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from potluck.tasks.data import LabeledData

__all__ = [
    "ADAPTIVE",
    "ATTACKS",
    "Replay",
    "candidates",
    "flatten",
    "flip_labels",
    "ipm",
    "min_max",
    "norm",
    "probe_flip",
    "random_direction",
    "sign_flip",
    "unflatten",
    "worst_of",
]

ADAPTIVE = ("adaptive_ipm", "adaptive_sign_flip", "min_max", "min_sum", "mimic", "alternating")
ATTACKS = (
    "none",
    "sign_flip",
    "random",
    "label_flip",
    "ipm_0.1",
    "ipm_100",
    "replay",
    *ADAPTIVE,
    "probe_flip",
)
PROBE_BOOSTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # x the probe-trained delta, smallest that passes first
SCALES = (1.0, 2.0, 3.0, 4.0)  # x the median honest norm: up to norm_filter's and history_clip's cut
TILTS = (0.0, 1.0)  # weight of the history's direction (against a rule with a history gate)
COVER = (1.0, 0.3, 0.2, 0.12)  # share of the push in an adaptive delta (the rest: noise, see candidates)
COVER0 = (0.98,)  # also in round 0 (no history), where history_clip collapses only exact copies

Delta = Mapping[str, np.ndarray]


def norm(delta: Delta) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in delta.values()))


def sign_flip(delta: Delta, scale: float = 1000.0) -> dict[str, np.ndarray]:
    return {k: (-scale * np.asarray(v, np.float64)).astype(np.float32) for k, v in delta.items()}


def random_direction(delta: Delta, seed: int, scale: float = 1000.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k in sorted(delta):
        v = np.asarray(delta[k])
        r = rng.standard_normal(v.shape)
        out[k] = np.where(v != 0, r, 0.0) if np.count_nonzero(v) else r
    factor = scale * norm(delta) / max(norm(out), 1e-30)
    return {k: (v * factor).astype(np.float32) for k, v in out.items()}


def flip_labels(data: LabeledData, classes: int = 10) -> LabeledData:
    return LabeledData(data.x, (classes - 1 - data.y).astype(np.int64), data.shard)


def ipm(honest: Sequence[Delta], eps: float) -> dict[str, np.ndarray]:
    out = {}
    for k in sorted(honest[0]):
        acc = np.zeros(np.shape(honest[0][k]), np.float64)
        for d in honest:
            acc += np.asarray(d[k], np.float64)
        out[k] = (-eps * acc / len(honest)).astype(np.float32)
    return out


class Replay:
    """Remembers the first delta it is shown and returns it ever after."""

    def __init__(self) -> None:
        self.first: dict[str, np.ndarray] | None = None

    def __call__(self, delta: Delta) -> dict[str, np.ndarray]:
        if self.first is None:
            self.first = {k: np.array(v, np.float32) for k, v in delta.items()}
        return {k: v.copy() for k, v in self.first.items()}


def flatten(delta: Delta) -> np.ndarray:
    return np.concatenate([np.asarray(delta[k], np.float64).reshape(-1) for k in sorted(delta)])


def unflatten(flat: np.ndarray, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The inverse of :func:`flatten` for tensors of ``shapes`` (sorted-name order), as float32."""
    out, at = {}, 0
    for k in sorted(shapes):
        size = math.prod(shapes[k])
        out[k] = flat[at : at + size].reshape(shapes[k]).astype(np.float32)
        at += size
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    n = math.sqrt(float(np.sum(v * v)))
    return v / n if n > 0 else v


def candidates(
    away: np.ndarray,
    honest: Sequence[np.ndarray],
    history: np.ndarray | None,
    covers: Sequence[np.ndarray],
    tilt: bool,
) -> list[list[np.ndarray]]:
    """Per candidate, one flat delta per attacker: ``s * m * unit(c * unit(away + lam * unit(history))
    + sqrt(1 - c^2) * unit(cover))``, m the median honest norm, ``covers`` one per attacker (c < 1:
    the push hides in a delta that agrees with nothing, and the attackers' deltas differ). ``tilt``:
    also lam = 1 (against a rule that gates on the history's direction). Without history (round 0)
    also the shares ``COVER0``: near-copies (pairwise cosine ~0.96) that count apart there."""
    m = sorted(math.sqrt(float(np.sum(h * h))) for h in honest)[(len(honest) - 1) // 2]
    tilts = TILTS if tilt and history is not None and np.any(history) else (0.0,)
    out = []
    for lam in tilts:
        d = _unit(_unit(away) + lam * _unit(history)) if lam else _unit(away)
        for c in COVER + (COVER0 if history is None else ()):
            rows = [_unit(c * d + math.sqrt(1 - c * c) * _unit(cover)) for cover in covers]
            out += [[s * m * r for r in rows] for s in SCALES]
    return out


def min_max(honest: Sequence[np.ndarray], total: bool) -> list[np.ndarray]:
    """Shejwalkar & Houmansadr's min-max (``total`` False) / min-sum (True) with p = -unit(mean):
    the largest gamma by bisection, then gamma, gamma/2, gamma/4 as flat candidates."""
    mean = np.mean(np.stack(honest), axis=0)
    p = -_unit(mean)

    def spread(x: np.ndarray) -> float:
        d = [float(np.sum((x - h) ** 2)) for h in honest]
        return sum(d) if total else max(d)

    bound = max(spread(h) for h in honest)
    lo, hi = 0.0, 1.0
    while spread(mean + hi * p) <= bound and hi < 1e6:
        lo, hi = hi, 2 * hi
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spread(mean + mid * p) <= bound else (lo, mid)
    return [mean + g * p for g in (lo, lo / 2, lo / 4)]  # one per candidate: every attacker sends it


def worst_of(cands: Sequence, damage):
    """The candidate with the lowest ``damage(candidate)`` (the first on ties)."""
    scores = [damage(c) for c in cands]
    return cands[min(range(len(cands)), key=lambda i: scores[i])]


def probe_flip(flip: Delta, boost: Delta, passes) -> dict[str, np.ndarray]:
    """``flip + t * boost`` for the smallest t of ``PROBE_BOOSTS`` with ``passes(candidate)`` (the
    largest t when none passes)."""
    for t in PROBE_BOOSTS:
        cand = {k: (np.asarray(flip[k], np.float64) + t * np.asarray(boost[k], np.float64)).astype(np.float32)
                for k in sorted(flip)}  # fmt: skip
        if passes(cand):
            break
    return cand
