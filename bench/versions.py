"""Benchmark: the version store as a chain of patches with periodic snapshots, against a full copy per
version (potluck.store.versions with ``snapshot_every`` N against 1).

    python bench/versions.py          # ~1M parameters, 100 rounds; ~1 minute on 2 cores

A float32 model of ``--params`` parameters in four tensors (a 3:1 pair of matrices and two vectors)
gets ``--rounds`` merged deltas, each touching a random ``--density-min``..``--density-max`` share
of the entries (uniform per round, seeded), stored with ``put(state, parent=...)`` as a node does. For
each ``--snapshot-every`` N: bytes on disk after 10, 25, 50 and all rounds, against the store of full
copies (N = 1), and against the **payload** = the snapshots' file sizes plus 8 bytes per changed entry
(a uint32 index and a float32 value: what a sparse delta needs at least); then the time to
materialise, in a fresh store (nothing cached, each read checked against its hash), the newest
version, the oldest committed one, and the deepest patch. JSON on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from potluck.store.versions import VersionStore


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def model(params: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    side = int(np.sqrt(params / 4))
    return {
        "a.weight": rng.standard_normal((3 * side, side)).astype(np.float32),
        "a.bias": rng.standard_normal(3 * side).astype(np.float32),
        "b.weight": rng.standard_normal((side, side)).astype(np.float32),
        "b.bias": rng.standard_normal(side).astype(np.float32),
    }


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("*.safetensors"))


def run(args: argparse.Namespace, every: int, root: Path) -> dict:
    rng = np.random.default_rng(args.seed)
    state = model(args.params, rng)
    store = VersionStore(root, snapshot_every=every)
    versions = [store.put(state)]
    patched_entries, at, put_s = 0, {}, 0.0
    for r in range(1, args.rounds + 1):
        density = rng.uniform(args.density_min, args.density_max)
        state = {k: v.copy() for k, v in state.items()}
        changed = 0
        for t in state.values():
            flat = t.reshape(-1)
            idx = rng.choice(flat.size, max(1, int(density * flat.size)), replace=False)
            before = flat[idx].copy()
            flat[idx] += (0.01 * rng.standard_normal(idx.size)).astype(np.float32)
            changed += int(np.count_nonzero(flat[idx] != before))
        started = time.perf_counter()
        versions.append(store.put(state, parent=versions[-1]))
        put_s += time.perf_counter() - started
        patched_entries += changed if store.is_patch(versions[-1]) else 0
        if r in (10, 25, 50, args.rounds):
            at[r] = disk_bytes(root)
    snapshots = sum(size for _, kind, size in store.stored() if kind == "snapshot")
    payload = snapshots + 8 * patched_entries
    fresh = VersionStore(root)
    deepest = max(versions, key=fresh.depth)
    timings = {}
    for name, v in (("newest", versions[-1]), ("oldest", versions[1]), ("deepest", deepest)):
        started = time.perf_counter()
        fresh.get(v)
        timings[name] = round(time.perf_counter() - started, 4)
    kinds = [kind for _, kind, _ in fresh.stored()]
    return {
        "snapshot_every": every, "bytes_at_round": at, "snapshots": kinds.count("snapshot"),
        "patches": kinds.count("patch"), "payload_bytes": payload,
        "ratio_to_payload": round(at[args.rounds] / payload, 4),
        "put_s_per_round": round(put_s / args.rounds, 4),
        "materialise_s": timings, "deepest_patches": fresh.depth(deepest),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=int, default=1 << 20)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--density-min", type=float, default=0.01)
    ap.add_argument("--density-max", type=float, default=0.02)
    ap.add_argument("--snapshot-every", default="1,10,25,100", help="comma-separated N (1: full copies)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rows = []
    for every in (int(x) for x in args.snapshot_every.split(",")):
        with tempfile.TemporaryDirectory(prefix="potluck-versions-") as tmp:
            log(f"snapshot every {every} ...")
            rows.append(run(args, every, Path(tmp)))
            log(json.dumps(rows[-1]))
    full = next((r for r in rows if r["snapshot_every"] == 1), None)
    for r in rows:
        if full is not None:
            r["ratio_to_full_copies"] = round(
                r["bytes_at_round"][args.rounds] / full["bytes_at_round"][args.rounds], 4
            )
    params = sum(t.size for t in model(args.params, np.random.default_rng(0)).values())
    out = {
        "bench": "versions", "params": params,
        "rounds": args.rounds, "density": [args.density_min, args.density_max], "machine": platform.machine(),
        "python": platform.python_version(), "stores": rows,
    }  # fmt: skip
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
