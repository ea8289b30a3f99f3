"""Error feedback with a mask every contributor of a round shares, or top-k, at b-bit values (exploration).

bench/lm.py's ``masked`` / ``topkq`` methods. ``masked``: every contributor of round r sends the same
seeded random ``density`` fraction of each tensor (the mask from the round's seed, so a receiver could
regenerate the indices from 8 bytes instead of reading them, and the merge averages all six values of
each sent coordinate); ``topkq``: each its own top-k, indices Rice coded as today. Values: ``bits``
per value, symmetric levels ``-(2**(b-1)-1) .. 2**(b-1)-1`` times one fp32 scale per block of 256
(``max|v|`` / top level, round to nearest); ``bits`` 8 is the codec's int8 exactly. What is not sent,
and the quantization error, stays in the residual. The updates still travel through potluck's codec
as int8 sparse entries (the values already on the b-bit grid survive int8 exactly enough: the bytes
are counted as b-bit values, not as the int8 codec wrote them; the residual keeps what int8 delivers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from potluck.updates.codec import SparseTensor
from potluck.updates.indices import encode_indices
from potluck.updates.quantize import BLOCK, INT8, SIGN, roundtrip
from potluck.updates.sparsify import k_for, topk_indices

__all__ = ["MaskedFeedback", "quantize_bits"]


def quantize_bits(v: np.ndarray, bits: int, gain: float = 1.0) -> np.ndarray:
    """``v`` rounded to ``bits``-bit symmetric levels, one scale per block of 256 (float32)."""
    if bits == 0:  # sign, +-max|v| of the block (the codec's sign encoding, no survivors rule)
        return roundtrip(v, SIGN)
    if bits == 1:  # scaled sign: +-mean|v| of the block
        n = v.size
        nb = -(-n // BLOCK)
        pad = np.zeros(nb * BLOCK, np.float32)
        pad[:n] = v
        scale = np.abs(pad.reshape(nb, BLOCK)).sum(axis=1) / np.float32(BLOCK)
        scale[-1] = np.abs(pad[(nb - 1) * BLOCK :]).sum() / np.float32(n - (nb - 1) * BLOCK)
        return (np.sign(v) * np.repeat(scale * np.float32(gain), BLOCK)[:n]).astype(np.float32)
    top = np.float32(2 ** (bits - 1) - 1)
    n = v.size
    nb = -(-n // BLOCK)
    pad = np.zeros(nb * BLOCK, np.float32)
    pad[:n] = v
    blocks = pad.reshape(nb, BLOCK)
    scale = np.abs(blocks).max(axis=1) / top
    inv = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale > 0)
    q = np.clip(np.rint(blocks * inv[:, None]), -top, top)
    return (q * scale[:, None]).reshape(-1)[:n].astype(np.float32)


class MaskedFeedback:
    def __init__(self, density: float, bits: int, mask: str, sticky: int = 1, gain: float = 1.0) -> None:
        self.gain = gain
        self.density, self.bits, self.mask, self.sticky = density, bits, mask, sticky
        self.residual: dict[str, np.ndarray] = {}
        self.masks: dict[str, np.ndarray] = {}
        self.calls = 0
        self.value_bytes = 0  # b-bit values + scales + the indices a receiver cannot derive, all rounds

    def compress(
        self, delta: Mapping[str, np.ndarray], round_seed: int, hot: Mapping[str, np.ndarray] | None = None
    ) -> list[SparseTensor]:
        """``hot``: indices every receiver knows (e.g. the last merged delta's largest), sent free."""
        out = []
        refresh = self.calls % self.sticky == 0
        self.calls += 1
        for i, name in enumerate(sorted(delta)):
            d = np.asarray(delta[name], np.float32)
            acc = self.residual.setdefault(name, np.zeros_like(d))
            acc += d
            flat = acc.reshape(-1)
            k = k_for(flat.size, self.density)
            if self.mask.startswith("block"):  # top k/B blocks of B consecutive entries by energy
                b = int(self.mask[5:])
                nb = -(-flat.size // b)
                pad = np.zeros(nb * b, np.float32)
                pad[: flat.size] = flat
                energy = (pad.reshape(nb, b) ** 2).sum(axis=1)
                blocks = np.sort(topk_indices(energy, max(1, round(k / b))))
                idx = (blocks[:, None] * b + np.arange(b)).reshape(-1)
                idx = idx[idx < flat.size]
                self.value_bytes += len(encode_indices(blocks, nb)[1])
            elif self.mask.startswith("group"):  # the largest of each group of G: ceil(log2 G) bits each
                g = int(self.mask[5:])
                ng = -(-flat.size // g)
                pad = np.zeros(ng * g, np.float32)
                pad[: flat.size] = np.abs(flat)
                idx = np.arange(ng) * g + pad.reshape(ng, g).argmax(axis=1)
                idx = idx[idx < flat.size].astype(np.int64)
                self.value_bytes += -(-idx.size * max(1, math.ceil(math.log2(g))) // 8)
            elif self.mask == "shared":
                rng = np.random.default_rng([round_seed, i])
                idx = np.sort(rng.choice(flat.size, k, replace=False)).astype(np.int64)
                self.value_bytes += 8
            elif not refresh and name in self.masks:  # the mask sent before, reused: no index bytes
                idx = self.masks[name]
            else:
                free = hot.get(name, np.zeros(0, np.int64)) if hot else np.zeros(0, np.int64)
                score = np.abs(flat)
                score[free] = 0
                own = topk_indices(score, k, row=acc.shape[-1] if acc.ndim else 1)
                self.value_bytes += len(encode_indices(own, flat.size)[1])
                idx = self.masks[name] = np.union1d(own, free).astype(np.int64)
            sent = roundtrip(quantize_bits(flat[idx], self.bits, self.gain), INT8)  # what the codec delivers
            flat[idx] -= sent
            self.value_bytes += -(-idx.size * max(1, self.bits) // 8) + 4 * -(-idx.size // BLOCK)
            out.append(SparseTensor(name, tuple(acc.shape), idx, sent))
        return out
