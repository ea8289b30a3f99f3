"""Benchmark: signed sparse update encode/decode on a large fp32 delta, against a naive baseline.

    PYTHONPATH=daemon python bench/update_codec.py [--size 100_000_000] [--density 0.01] [--repeats 3]

Prints one JSON object. Throughputs are GB/s of *dense fp32 input* (size * 4 bytes / seconds).
encode = sparsify (sampled-threshold exact top-k) + int8 quantize + serialize + sign;
decode = parse + verify + decode indices/values + apply to a copy of the base.
Baseline, measured in the same run: exact ``torch.topk`` of |delta| + ``pickle`` of int64 indices
and fp32 values; decode = ``pickle.loads`` + ``index_add_`` into a copy of the base.
Memory: about 6 x size x 4 bytes (delta, base, applied copies, torch temporaries): ~2.5 GB at 100M.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import statistics
import time

import numpy as np
import torch

from potluck.identity import NodeIdentity
from potluck.updates.codec import Update, apply_update, decode_update, encode_update
from potluck.updates.sparsify import k_for, sparsify


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


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=100_000_000, help="approximate parameter count")
    ap.add_argument("--density", type=float, default=0.01)
    ap.add_argument("--values", choices=["int8", "fp16"], default="int8")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    shapes = shapes_for(args.size)
    delta = {n: rng.standard_normal(s, dtype=np.float32) for n, s in shapes.items()}
    base = {n: rng.standard_normal(s, dtype=np.float32) for n, s in shapes.items()}
    numel = sum(int(np.prod(s)) for s in shapes.values())
    dense_bytes = 4 * numel
    identity = NodeIdentity.generate()
    base_hash = "00" * 32

    def encode() -> bytes:
        tensors = tuple(sparsify(n, d, args.density) for n, d in delta.items())
        update = Update("bench", 0, base_hash, identity.public_key, 1, 1, tensors)
        return encode_update(update, identity, args.values)

    def decode(data: bytes) -> dict[str, np.ndarray]:
        return apply_update(base, decode_update(data))

    def decode_inplace(data: bytes) -> dict[str, np.ndarray]:
        return apply_update(base, decode_update(data), inplace=True)

    enc_s, wire = timed(encode, args.repeats)
    dec_s, applied = timed(lambda: decode(wire), args.repeats)
    dec_inplace_s, _ = timed(lambda: decode_inplace(wire), args.repeats)
    for n in list(delta)[:2]:  # sanity: the applied tensors differ from the base exactly at k places
        assert np.count_nonzero(applied[n] != base[n]) <= k_for(delta[n].size, args.density)

    tdelta = {n: torch.from_numpy(d) for n, d in delta.items()}
    tbase = {n: torch.from_numpy(b) for n, b in base.items()}

    def naive_encode() -> bytes:
        out = {}
        for n, d in tdelta.items():
            flat = d.reshape(-1)
            idx = torch.topk(flat.abs(), k_for(flat.numel(), args.density), sorted=False).indices
            out[n] = (idx.numpy(), flat[idx].numpy())
        return pickle.dumps(out, protocol=5)

    def naive_decode(data: bytes) -> dict[str, torch.Tensor]:
        out = dict(tbase)
        for n, (idx, vals) in pickle.loads(data).items():
            t = tbase[n].clone()
            t.view(-1).index_add_(0, torch.from_numpy(idx), torch.from_numpy(vals))
            out[n] = t
        return out

    naive_enc_s, naive_wire = timed(naive_encode, args.repeats)
    naive_dec_s, _ = timed(lambda: naive_decode(naive_wire), args.repeats)

    gbs = lambda s: round(dense_bytes / s / 1e9, 3)  # noqa: E731
    result = {
        "params": numel,
        "tensors": len(shapes),
        "density": args.density,
        "values": args.values,
        "repeats": args.repeats,
        "machine": {"threads": torch.get_num_threads(), "python": platform.python_version()},
        "encode_s": round(enc_s, 4),
        "encode_gbps": gbs(enc_s),
        "decode_apply_s": round(dec_s, 4),
        "decode_apply_gbps": gbs(dec_s),
        "decode_apply_inplace_gbps": gbs(dec_inplace_s),
        "wire_bytes": len(wire),
        "dense_fp32_bytes": dense_bytes,
        "compression_x": round(dense_bytes / len(wire), 1),
        "baseline": {
            "encode_s": round(naive_enc_s, 4),
            "encode_gbps": gbs(naive_enc_s),
            "decode_apply_s": round(naive_dec_s, 4),
            "decode_apply_gbps": gbs(naive_dec_s),
            "wire_bytes": len(naive_wire),
            "compression_x": round(dense_bytes / len(naive_wire), 1),
        },
        "speedup_encode_x": round(naive_enc_s / enc_s, 2),
        "speedup_decode_apply_x": round(naive_dec_s / dec_s, 2),
        "bytes_vs_baseline_x": round(len(naive_wire) / len(wire), 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
