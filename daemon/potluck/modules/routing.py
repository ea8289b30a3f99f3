"""Routing among kept modules, and the merged alternative (pure numpy).

Routing rule, per token, for modules 1..M with gates ``(w_m, b_m)`` and the trunk's final hidden
state ``h`` at that token (the trunk alone, no adapter applied):

1. scores ``s_m = w_m . h + b_m``; with ``prefix`` scoring, each token's score is instead the mean of
   ``s_m`` over the tokens of its window up to and including it (the document so far, as far as the
   model sees it), so a token is routed by its context rather than by itself alone;
2. the top ``k`` modules by score (ties: the lower index, i.e. the earlier name, wins);
3. weights ``g_m = softmax(s over the chosen k)`` for a chosen module, 0 otherwise (top-1: ``g = 1``);
4. every adapted matrix ``W`` of the trunk maps that token's input ``x`` to
   ``x @ W + sum_m g_m * (x @ A_m) @ B_m`` (a module without an adapter on ``W`` adds nothing there).

A token's routing depends only on bytes up to it (``h`` is causal), so generation can route too.
Merging instead adds ``c * sum_m A_m @ B_m`` to each adapted tensor once (``c = 1/M``: the mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from potluck.modules.record import Module
from potluck.updates.lowrank import expand

__all__ = ["gate_matrix", "merged_deltas", "prefix_mean", "route_weights"]


def gate_matrix(modules: Sequence[Module]) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)``: W is (M, d) with the modules' gate vectors as rows, b is (M,)."""
    w = np.stack([m.gate_w for m in modules]).astype(np.float32)
    return w, np.array([m.gate_b for m in modules], dtype=np.float32)


def prefix_mean(scores: np.ndarray) -> np.ndarray:
    """Scores (..., T, M) averaged over each token's prefix along T (causal: token t sees 0..t)."""
    scores = np.asarray(scores, dtype=np.float64)
    steps = np.arange(1, scores.shape[-2] + 1, dtype=np.float64)[:, None]
    return np.cumsum(scores, axis=-2) / steps


def route_weights(scores: np.ndarray, k: int) -> np.ndarray:
    """Routing weights (..., M) for gate ``scores`` (..., M): softmax over each token's top ``k``."""
    scores = np.asarray(scores, dtype=np.float64)
    m = scores.shape[-1]
    if not 1 <= k <= m:
        raise ValueError(f"top-k routing needs 1 <= k <= {m} modules, got k={k}")
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]  # stable: ties go to the lower index
    chosen = np.take_along_axis(scores, order, axis=-1)
    e = np.exp(chosen - chosen.max(axis=-1, keepdims=True))
    out = np.zeros_like(scores)
    np.put_along_axis(out, order, e / e.sum(axis=-1, keepdims=True), axis=-1)
    return out.astype(np.float32)


def merged_deltas(modules: Sequence[Module], coefficient: float | None = None) -> dict[str, np.ndarray]:
    """``{tensor: c * sum_m A_m @ B_m}`` over the modules adapting it (c = 1/M unless given), float32,
    each product expanded exactly (potluck.updates.lowrank.expand) and summed in the modules' order."""
    if not modules:
        return {}
    c = 1.0 / len(modules) if coefficient is None else coefficient
    out: dict[str, np.ndarray] = {}
    for m in modules:
        for tensor, (a, b) in m.adapters.items():
            d = expand(a, b).astype(np.float64) * c
            out[tensor] = out[tensor] + d if tensor in out else d
    return {t: d.astype(np.float32) for t, d in out.items()}
