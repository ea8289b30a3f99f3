"""Benchmark: signed sparse update encode/decode on a large fp32 delta, against a naive baseline.

    python bench/update_codec.py [--size 100_000_000] [--density 0.01] [--repeats 3]

Prints one JSON object on stdout (progress on stderr). Throughputs are GB/s of *dense fp32 input*
(size * 4 bytes / seconds); times are medians of ``--repeats`` runs after one untimed warm-up run,
potluck and baseline alternating, so both see the same background load: compare the ratios.

* encode = sparsify (sampled-threshold exact top-k) + int8 quantize + serialize + sign.
* decode_apply_inplace (**primary**, the one the 1 GB/s target is about) = parse + canonical-form
  check + sha256 + signature verify + decode indices/values (+ every validity check) + add into a
  working copy of the model that already exists, which is what a node does: it owns its working
  copy and the round engine accumulates many updates into one buffer.
* decode_apply_copy (secondary) = the same, but into a *fresh* copy of every touched tensor
  (``apply_update`` without ``inplace``). That copy alone is ``copy_only_s``: 400 MB of new pages at
  100M parameters, mostly page faults, and very noisy (it depends on whether the allocator reuses
  freed pages), so it swamps the decode.
* breakdown_ms: the parts of decode_apply_inplace, timed alone (medians); ``accumulate_f64`` is
  ``accumulate`` of the decoded update into a float64 buffer with a weight.

Baseline, measured in the same run: exact ``torch.topk`` of |delta| + ``pickle`` of int64 indices and
fp32 values; its decode = ``pickle.loads`` + ``index_add_``, in place into its own working copy
(inplace) or into a ``clone`` of each tensor (copy: the same copy routine as ``apply_update``'s).
It checks nothing and signs nothing.

Memory: about 7 x size x 4 bytes (delta, base, two working copies, fresh copies, temporaries):
~3 GB at 100M.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import platform
import statistics
import sys
import time
from collections.abc import Callable

import msgpack
import numpy as np
import torch

from potluck.identity import NodeIdentity, verify
from potluck.updates.apply import accumulate, apply_update
from potluck.updates.codec import (
    Update,
    decode_update,
    encode_update,
    parse_update,
)
from potluck.updates.indices import decode_indices
from potluck.updates.quantize import dequantize
from potluck.updates.sparsify import k_for, sparsify

TARGETS = {"encode_gbps": 1.0, "decode_apply_inplace_gbps": 1.0, "compression_x": 100.0}


def shapes_for(size: int) -> dict[str, tuple[int, ...]]:
    """A transformer-like layout (embedding, 8 blocks of attention/MLP matrices, norms) of ~size params."""
    d = max(8, round((size / 88) ** 0.5))  # 32 d^2 + 8 * (3 + 1 + 3 on average) d^2 = 88 d^2
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (32 * d, d)}
    for i in range(8):
        shapes[f"blocks.{i}.attn.qkv.weight"] = (3 * d, d)
        shapes[f"blocks.{i}.attn.out.weight"] = (d, d)
        shapes[f"blocks.{i}.mlp.up.weight"] = (4 * d, d) if i % 2 else (d * 4 // 2, d)
        shapes[f"blocks.{i}.norm.weight"] = (d,)
    return shapes


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function over ``repeats`` rounds (after one warm-up round); the
    functions run in turn within each round so that they share the machine's background load."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=100_000_000, help="approximate parameter count")
    ap.add_argument("--density", type=float, default=0.01, help="fraction of entries sent")
    ap.add_argument("--values", choices=["int8", "fp16"], default="int8", help="value encoding")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    shapes = shapes_for(args.size)
    delta = {n: rng.standard_normal(s, dtype=np.float32) for n, s in shapes.items()}
    base = {n: rng.standard_normal(s, dtype=np.float32) for n, s in shapes.items()}
    numel = sum(int(np.prod(s)) for s in shapes.values())
    dense_bytes = 4 * numel
    identity = NodeIdentity.generate()
    base_hash = "00" * 32
    tdelta = {n: torch.from_numpy(d) for n, d in delta.items()}
    tbase = {n: torch.from_numpy(b) for n, b in base.items()}

    # ------------------------------------------------------------------------------------ encode
    def encode() -> bytes:
        tensors = tuple(sparsify(n, d, args.density) for n, d in delta.items())
        update = Update("bench", 0, base_hash, identity.public_key, 1, 1, tensors)
        return encode_update(update, identity, args.values)

    def naive_encode() -> bytes:
        out = {}
        for n, d in tdelta.items():
            flat = d.reshape(-1)
            idx = torch.topk(flat.abs(), k_for(flat.numel(), args.density), sorted=False).indices
            out[n] = (idx.numpy(), flat[idx].numpy())
        return pickle.dumps(out, protocol=5)

    log("encode ...")
    wire, naive_wire = encode(), naive_encode()
    enc = timed({"potluck": encode, "baseline": naive_encode}, args.repeats)

    # ------------------------------------------------------------------------------------ decode
    work = {n: b.copy() for n, b in base.items()}  # the node's working copy (potluck)
    naive_work = {n: b.clone() for n, b in tbase.items()}  # the baseline's own working copy

    def decode_inplace() -> object:
        return apply_update(work, decode_update(wire), inplace=True)

    def decode_copy() -> dict[str, np.ndarray]:
        return apply_update(base, decode_update(wire))

    def naive_decode_inplace() -> object:
        for n, (idx, vals) in pickle.loads(naive_wire).items():
            naive_work[n].view(-1).index_add_(0, torch.from_numpy(idx), torch.from_numpy(vals))
        return naive_work

    def naive_decode_copy() -> dict[str, torch.Tensor]:
        out = dict(tbase)
        for n, (idx, vals) in pickle.loads(naive_wire).items():
            t = tbase[n].clone()
            t.view(-1).index_add_(0, torch.from_numpy(idx), torch.from_numpy(vals))
            out[n] = t
        return out

    def copy_only() -> dict[str, torch.Tensor]:
        return {n: t.clone() for n, t in tbase.items()}

    log("decode + apply in place ...")
    inplace = timed({"potluck": decode_inplace, "baseline": naive_decode_inplace}, args.repeats)
    log("decode + apply into a fresh copy ...")
    copy = timed(
        {"potluck": decode_copy, "baseline": naive_decode_copy, "copy_only": copy_only}, args.repeats
    )

    applied = decode_copy()  # sanity: each tensor differs from the base at no more than k places
    for n in delta:
        assert np.count_nonzero(applied[n] != base[n]) <= k_for(delta[n].size, args.density), n
    del applied

    # --------------------------------------------------------------------------------- breakdown
    log("breakdown ...")
    parsed = parse_update(wire)
    body = msgpack.unpackb(wire)[0]
    body_obj = msgpack.unpackb(body)
    digest = hashlib.sha256(body).digest()
    signed = parsed.decode()
    acc64 = {n: np.zeros(s, np.float64) for n, s in shapes.items()}
    parts = timed(
        {
            "parse": lambda: parse_update(wire),
            "sha256": lambda: hashlib.sha256(body).digest(),
            "canonical_repack": lambda: msgpack.packb(body_obj, use_bin_type=True),
            "verify_signature": lambda: verify(identity.public_key, parsed.signature, digest),
            "decode_payloads": parsed.decode,
            "decode_indices": lambda: [
                decode_indices(t.index_encoding, t.index_bytes, t.nnz, t.numel) for t in parsed.tensors
            ],
            "dequantize": lambda: [
                dequantize(t.value_bytes, t.scale_bytes, t.value_encoding, t.nnz) for t in parsed.tensors
            ],
            "apply_inplace": lambda: apply_update(work, signed, inplace=True),
            "accumulate_f64": lambda: accumulate(acc64, signed, 0.25),
        },
        max(args.repeats, 5),
    )

    gbs = lambda s: round(dense_bytes / s / 1e9, 3)  # noqa: E731
    result = {
        "params": numel,
        "tensors": len(shapes),
        "density": args.density,
        "values": args.values,
        "repeats": args.repeats,
        "machine": {
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
        },
        "encode_s": round(enc["potluck"], 4),
        "encode_gbps": gbs(enc["potluck"]),
        "decode_apply_inplace_s": round(inplace["potluck"], 4),
        "decode_apply_inplace_gbps": gbs(inplace["potluck"]),
        "decode_apply_copy_s": round(copy["potluck"], 4),
        "decode_apply_copy_gbps": gbs(copy["potluck"]),
        "copy_only_s": round(copy["copy_only"], 4),
        "wire_bytes": len(wire),
        "dense_fp32_bytes": dense_bytes,
        "compression_x": round(dense_bytes / len(wire), 1),
        "breakdown_ms": {k: round(v * 1e3, 2) for k, v in parts.items()},
        "baseline": {
            "encode_s": round(enc["baseline"], 4),
            "encode_gbps": gbs(enc["baseline"]),
            "decode_apply_inplace_s": round(inplace["baseline"], 4),
            "decode_apply_inplace_gbps": gbs(inplace["baseline"]),
            "decode_apply_copy_s": round(copy["baseline"], 4),
            "decode_apply_copy_gbps": gbs(copy["baseline"]),
            "wire_bytes": len(naive_wire),
            "compression_x": round(dense_bytes / len(naive_wire), 1),
        },
        "speedup_encode_x": round(enc["baseline"] / enc["potluck"], 2),
        "speedup_decode_apply_inplace_x": round(inplace["baseline"] / inplace["potluck"], 2),
        "speedup_decode_apply_copy_x": round(copy["baseline"] / copy["potluck"], 2),
        "bytes_vs_baseline_x": round(len(naive_wire) / len(wire), 2),
    }
    result["targets"] = {k: {"target": v, "met": result[k] >= v} for k, v in TARGETS.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
