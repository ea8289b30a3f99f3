"""Error feedback that sends 2-D tensors as low-rank factors: one update mixing low-rank and sparse entries.

bench/lm.py's `factored` method: measured worse than LoRA patches (bench/README.md#lm), so it lives
here, beside the bench, not in the package; it builds updates only through potluck's public codec.

A contributor trains the whole model (as for sparse patches) and hands its delta to
:class:`LowRankFeedback`. For each chosen 2-D tensor the delta is added to a residual, the residual's
best rank-r approximation (truncated SVD, the factors balanced) is published as a low-rank entry, and
what the receiver will expand from the quantized factors is taken out of the residual: the rest
(what rank r misses, and the quantization error) waits for later rounds, as top-k's error feedback
keeps what it does not send. Every other tensor (biases, LayerNorms, whatever is not chosen) goes
through a plain :class:`~potluck.updates.sparsify.ErrorFeedback` at its density. Both kinds travel in
one update (docs/update-format.md: a body's tensor entries may be of either kind).

The SVD runs only on the sender: LAPACK need not give the same bits everywhere, since receivers see
the factors' bytes and expand them bit for bit alike (:func:`~potluck.updates.lowrank.expand`).
bench/lm.py's ``factored`` patches use it; ``potluck join`` does not (it measured worse than LoRA
adapters at the same rank there, bench/README.md#lm).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import numpy as np

from potluck.updates.codec import SparseTensor
from potluck.updates.lowrank import LowRankTensor, balance, expand
from potluck.updates.quantize import FP16, INT8, roundtrip
from potluck.updates.sparsify import ErrorFeedback

__all__ = ["LowRankFeedback"]


class LowRankFeedback:
    """Rank-``rank`` factors (error feedback) for the 2-D tensors named in ``targets``; ``sparse``
    compresses the others. ``ranks``: a lower rank for some tensors (a parameter group's ``max_rank``)."""

    def __init__(self, rank: int, targets: Collection[str], sparse: ErrorFeedback) -> None:
        if type(rank) is not int or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        self.rank = rank
        self.ranks: dict[str, int] = {}
        self.targets = frozenset(targets)
        self.sparse = sparse
        # factors take fp16 when the run's values are fp16, else int8 (signs are for sparse entries)
        self.value_encoding = FP16 if sparse.value_encoding == FP16 else INT8
        self.residual: dict[str, np.ndarray] = {}

    def compress(self, delta: Mapping[str, np.ndarray]) -> list[SparseTensor | LowRankTensor]:
        """Add ``delta`` to the residuals; the targets' rank-r factors and the others' sparse entries."""
        out: list[SparseTensor | LowRankTensor] = []
        for name in sorted(n for n in delta if n in self.targets):
            d = np.asarray(delta[name], dtype=np.float32)
            if d.ndim != 2:
                raise ValueError(f"{name}: low-rank feedback needs a 2-D tensor, got shape {d.shape}")
            acc = self.residual.get(name)
            acc = self.residual[name] = d.copy() if acc is None or acc.shape != d.shape else acc + d
            rank = min(self.ranks.get(name, self.rank), *d.shape)
            a, b = self._factors(acc, rank)
            if a is None:
                continue  # nothing left to send
            n = a.size
            sent = roundtrip(np.concatenate([a.reshape(-1), b.reshape(-1)]), self.value_encoding)
            acc -= expand(sent[:n].reshape(a.shape), sent[n:].reshape(b.shape))  # what the receiver adds
            out.append(LowRankTensor(name, tuple(d.shape), a, b))
        out.extend(self.sparse.compress({k: v for k, v in delta.items() if k not in self.targets}))
        return sorted(out, key=lambda t: t.name)

    @staticmethod
    def _factors(acc: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """The balanced float32 factors of ``acc``'s best rank-``rank`` approximation (None if zero)."""
        u, s, vt = np.linalg.svd(acc.astype(np.float64), full_matrices=False)
        keep = int(np.count_nonzero(s[:rank] > 0))
        if keep == 0:
            return None, None
        root = np.sqrt(s[:keep])
        return balance(u[:, :keep] * root, root[:, None] * vt[:keep])

    def residual_norm(self) -> float:
        own = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in self.residual.values())
        return math.sqrt(own + self.sparse.residual_norm() ** 2)
