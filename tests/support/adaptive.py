"""Adaptive attackers for real-node tests (not shipped): updates crafted against a robust merge rule by
contributors that see the honest updates of the round before they publish (the strongest position)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from potluck.identity import NodeIdentity
from potluck.updates.codec import Update, encode_update
from potluck.updates.sparsify import sparsify

State = Mapping[str, np.ndarray]


def dense(update: Update) -> dict[str, np.ndarray]:
    """An update's delta as dense float64 tensors (its sparse values where it has them, 0 elsewhere)."""
    out = {}
    for t in update.tensors:
        flat = np.zeros(int(np.prod(t.shape)))
        flat[np.asarray(t.indices)] = np.asarray(t.values, np.float64)
        out[t.name] = flat.reshape(t.shape)
    return out


def flat(tensors: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    return np.concatenate([np.asarray(tensors[n], np.float64).reshape(-1) for n in names])


def signed_update(
    author: NodeIdentity, run_id: str, r: int, base: str, delta: State, density: float, samples: int = 10
) -> bytes:
    """``delta`` (dense) sparsified to ``density`` per tensor, signed by ``author`` for round ``r`` on
    ``base`` (its sequence number the time in ms, as `potluck update make` does)."""
    tensors = tuple(sparsify(n, np.asarray(delta[n], np.float32), density) for n in sorted(delta))
    seq = time.time_ns() // 1_000_000
    return encode_update(Update(run_id, r, base, author.public_key, seq, samples, tensors), author)


def opposite_under_radius(honest: Sequence[State], fraction: float = 0.9) -> dict[str, np.ndarray]:
    """The inner-product manipulation a norm or clipping rule lets through: the negated direction of the
    honest mean, with ``fraction`` of the honest updates' median norm (just under any radius that
    keeps the honest updates whole)."""
    names = sorted(honest[0])
    rows = np.stack([flat(h, names) for h in honest])
    mean = rows.mean(axis=0)
    size = fraction * float(np.median(np.sqrt((rows * rows).sum(axis=1))))
    attack = -size * mean / np.sqrt(float(mean @ mean))
    out, at = {}, 0
    for n in names:
        k = int(np.prod(honest[0][n].shape))
        out[n] = attack[at : at + k].reshape(honest[0][n].shape)
        at += k
    return out
