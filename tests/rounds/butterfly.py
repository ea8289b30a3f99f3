"""A float64 imitation of hivemind's butterfly all-reduce, for tests of potluck.rounds.fixedpoint.

Peer i reduces one contiguous slice of the vector: it sums every peer's part in float64, in an
arbitrary arrival order, divides by the total weight (n, equal weights), and sends each peer
``average - its own part``; each peer adds that back to its own part. The result differs between
peers in the last bits, as hivemind's does.

Failure modes (hivemind 1.1.12, shared/HIVEMIND.md): ``dead=i``: reducer i died, so every survivor
keeps its own local values in slice i; with ``lost_tail=k`` only the last k values of that slice
are lost (the reducer died after sending its first parts).
"""

from __future__ import annotations

import numpy as np


def slices(size: int, n: int, rng: np.random.Generator, min_size: int = 0) -> list[slice]:
    """n contiguous slices covering [0, size), uneven (as from load balancing), each >= min_size
    where size allows."""
    if n == 1:
        return [slice(0, size)]
    share = rng.uniform(0.5, 1.5, n)
    cuts = np.floor(np.cumsum(share) / share.sum() * size).astype(int)
    cuts[-1] = size
    bounds = [0, *cuts.tolist()]
    for i in range(1, n):  # enforce the minimum from the left
        bounds[i] = max(bounds[i], min(size, bounds[i - 1] + min_size))
    return [slice(bounds[i], bounds[i + 1]) for i in range(n)]


def butterfly(
    vectors: list[np.ndarray],
    rng: np.random.Generator,
    *,
    dead: int | None = None,
    lost_tail: int | None = None,
    min_size: int = 0,
) -> dict[int, np.ndarray]:
    """Each surviving peer's averaged vector (peer index -> float64 vector)."""
    n = len(vectors)
    xs = [np.asarray(v, dtype=np.float64) for v in vectors]
    results = {p: xs[p].copy() for p in range(n) if p != dead}
    for reducer, sl in enumerate(slices(xs[0].size, n, rng, min_size)):
        if reducer == dead:
            if lost_tail is None:
                continue  # every survivor keeps its local values in this slice
            lost = slice(max(sl.start, sl.stop - lost_tail), sl.stop)
            sl = slice(sl.start, lost.start)
        acc = np.zeros(sl.stop - sl.start, dtype=np.float64)
        for p in rng.permutation(n):
            acc += xs[p][sl] * 1.0  # weight 1
        average = acc / float(n)
        for p, out in results.items():
            delta = average - xs[p][sl]
            out[sl] = xs[p][sl] + delta
    return results
