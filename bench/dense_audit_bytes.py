"""Benchmark (bytes only, no network): what a dense round's keeper fetches today, against fetching only
the coordinates its audits recompute (issue 13's "the dense path saves CPU but not bytes").

    python bench/dense_audit_bytes.py [--params 50_000_000] [--keepers 4] [--updates 4] [--measure 4_000_000]

Today every keeper fetches every update of a dense round whole: the audits recompute from them
(engine/dense.py). It needs whole only the updates it carries; of the others, only their values at the
coordinates it audits: 256 of its own range per other carrier (the parts it reduces) and 256 of every
other reducer's range (the merged ranges), conduct.AUDIT_SAMPLES each. Those bytes are counted three ways:

* ``unverified``: each audited coordinate's value byte and its block's fp32 scale (int8 values), taken on
  trust from the holder: a holder could then make an honest sum look wrong (refused attempts), so this
  is a floor, not a design;
* ``merkle_<leaf>``: the update's encoded body committed by a Merkle tree of ``leaf``-byte leaves that
  the author signs (a format change, docs/update-format.md): each audited coordinate's leaf, its
  block's scale leaf, and the sibling hashes a multiproof of all of them needs (counted exactly for
  this draw of coordinates).

The whole update's size is measured: a dense int8 update of ``--measure`` parameters encoded and signed
as a contributor does (updates/codec.py), scaled to ``--params`` per coordinate (the format is linear
in them). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from potluck.engine.conduct import AUDIT_SAMPLES
from potluck.identity import NodeIdentity
from potluck.rounds.dense import range_bounds
from potluck.updates.codec import SparseTensor, Update, encode_update

HASH = 32


def update_bytes_per_param(n: int) -> float:
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    author = NodeIdentity.generate()
    tensor = SparseTensor("w", (n,), np.arange(n, dtype=np.int64), values)
    data = encode_update(Update("run", 0, "0" * 64, author.public_key, 1, 10, (tensor,)), author)
    return len(data) / n


def multiproof_hashes(leaves: int, wanted: set[int]) -> int:
    """Sibling hashes a verifier needs to tie the leaves ``wanted`` to the root of a binary tree."""
    known, level, count = set(wanted), leaves, 0
    while level > 1:
        parents = set()
        for i in known:
            sibling = i ^ 1
            if sibling < level and sibling not in known:
                count += 1
            parents.add(i // 2)
        known, level = parents, (level + 1) // 2
    return count


def audited_columns(params: int, keepers: int, me: int, rng: np.random.Generator) -> np.ndarray:
    bounds = range_bounds(params, keepers)
    lo, hi = bounds[me]
    own = [rng.choice(np.arange(lo, hi), AUDIT_SAMPLES, replace=False) for _ in range(keepers - 1)]
    others = [
        rng.choice(np.arange(a, b), AUDIT_SAMPLES, replace=False)
        for j, (a, b) in enumerate(bounds)
        if j != me
    ]
    return np.unique(np.concatenate(own + others))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=50_000_000)
    ap.add_argument("--keepers", type=int, default=4)
    ap.add_argument("--updates", type=int, default=4)
    ap.add_argument("--measure", type=int, default=4_000_000)
    args = ap.parse_args()
    per_param = update_bytes_per_param(args.measure)
    whole = per_param * args.params
    fetched = args.updates - math.ceil(args.updates / args.keepers)  # updates a keeper does not carry
    columns = audited_columns(args.params, args.keepers, 0, np.random.default_rng(1))
    out: dict = {
        "params": args.params, "keepers": args.keepers, "updates": args.updates,
        "update_bytes": round(whole), "update_bytes_per_param": round(per_param, 4),
        "audited_columns": int(columns.size),
        "today_bytes": round(fetched * whole),
    }  # fmt: skip
    scales_at = args.params  # int8 body: values (1 byte each), then one fp32 scale per 256 values
    blocks = np.unique(columns // 256)
    out["unverified_bytes"] = fetched * int(columns.size + 4 * blocks.size)
    for leaf in (256, 1024, 8192):
        value_leaves = set((columns // leaf).tolist())
        scale_leaves = set(((scales_at + 4 * blocks) // leaf).tolist())
        wanted = value_leaves | scale_leaves
        leaves = math.ceil((scales_at + 4 * math.ceil(args.params / 256)) / leaf)
        per_update = len(wanted) * leaf + multiproof_hashes(leaves, wanted) * HASH
        out[f"merkle_{leaf}_bytes"] = fetched * per_update
    out["ratios_today_over"] = {
        k.removesuffix("_bytes"): round(out["today_bytes"] / v, 1)
        for k, v in out.items()
        if k.endswith("_bytes") and k not in ("today_bytes", "update_bytes")
    }
    print(json.dumps(out, indent=1))
    print(f"measured {args.measure} parameters' update, scaled to {args.params}", file=sys.stderr)


if __name__ == "__main__":
    main()
