"""Benchmark: a module library routed per token vs the same modules merged into the trunk (lm task).

    python bench/modules.py             # a few minutes on 2 cores

The `lm` task (bench/lm.py's small size unless `--task-arg`) is pre-trained `--pretrain-steps` on every
domain's training split, as bench/lm.py does: the trunk. One contributor per domain then trains a module
on that domain's training text (potluck.tasks.lm_modules.train_module): a rank-`--rank` LoRA adapter
on every block's ``attn.c_attn`` and ``mlp.c_fc`` for `--steps` steps, then its gate for `--gate-steps`
steps at `--gate-lr` (own text vs every domain's training text; `--calibrate` then z-scores it on
that general text, potluck.tasks.lm_modules.calibrate_gate). Each module goes through the real
record: signed by its author, opened, checked against the trunk (its bytes are reported). In process,
no network.

Scored on each domain's fixed held-out text, BPB (lower is better):

* ``trunk``; ``own module merged`` (each domain scored with its own module added at full weight: what
  a single specialist gives, an upper reference for a router that knows the domain);
* ``merged mean`` / ``merged sum``: ``trunk + c * sum_m A_m @ B_m`` with c = 1/3 (the mean) or 1;
* ``routed top-1`` / ``routed top-2``: per token, the rule of potluck.modules.routing, by the token's
  own gate scores, and (``prefix scores``) by their mean over the token's prefix in its window.

Also, per domain, the share of held-out bytes whose top-1 gate is the domain's own module. JSON on
stdout, a markdown table on stderr.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch
from lm import emit, lm_and_genesis  # bench/lm.py: this script's folder is on the path

from potluck.hashing import version_hash
from potluck.identity import NodeIdentity
from potluck.modules.record import Module, check_against, open_module, sign_module
from potluck.modules.routing import gate_matrix, prefix_mean
from potluck.tasks.corpus import DOMAINS, held_out_text
from potluck.tasks.lm_modules import calibrate_gate, merged_state, routed_forward, train_module

RUN = "bench-modules"


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def gate_hits(task, trunk, modules: list[Module], prefix: bool) -> dict[str, float]:
    """Per domain: the share of held-out positions whose top gate score is the domain's own module's."""
    gw, gb = (torch.from_numpy(x) for x in gate_matrix(modules))
    out = {}
    with torch.no_grad():
        params = task._params(trunk)
        for i, domain in enumerate(DOMAINS):
            text = held_out_text(domain)[: task.eval_bytes]
            n = (text.size // task.context) * task.context
            x = torch.from_numpy(text[:n].reshape(-1, task.context).astype(np.int64))
            scores = (task.hidden(params, x) @ gw.T + gb).numpy()
            top = (prefix_mean(scores) if prefix else scores).argmax(-1)
            out[domain] = float((top == i).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=120, help="adapter steps per module")
    ap.add_argument("--gate-steps", type=int, default=200)
    ap.add_argument("--gate-lr", type=float, default=0.01)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--calibrate", action="store_true", help="z-score each gate on general text")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="also write the JSON to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    task, task_args, trunk = lm_and_genesis(args.task_arg, args.pretrain_steps, args.seed)
    trunk_hash = version_hash(trunk)
    general = task.local_data(None)
    modules, record_bytes = [], {}
    for i, domain in enumerate(DOMAINS):
        log(f"module {domain}: adapter {args.steps} steps, gate {args.gate_steps} steps")
        adapters, gw, gb = train_module(
            task, trunk, task.local_data(domain), general, steps=args.steps, gate_steps=args.gate_steps,
            seed=args.seed + 1 + i, rank=args.rank, gate_lr=args.gate_lr,
        )  # fmt: skip
        if args.calibrate:
            gw, gb = calibrate_gate(task, trunk, (gw, gb), general, seed=args.seed)
        author = NodeIdentity.generate()
        signed = sign_module(
            author, Module(RUN, domain, author.public_key, 1, trunk_hash, domain, adapters, gw, gb)
        )
        module = open_module(signed)
        check_against(module, RUN, task.shapes(), task.d_model, max_rank=args.rank)
        modules.append(module)
        record_bytes[domain] = len(signed)
    rows = {"trunk": task.evaluate_domains(trunk)}
    own = {
        d: task.evaluate_domains(merged_state(trunk, [m], 1.0))[d]
        for d, m in zip(DOMAINS, modules, strict=True)
    }
    rows["own module merged"] = own | {"overall": None}
    rows["merged mean"] = task.evaluate_domains(merged_state(trunk, modules))
    rows["merged sum"] = task.evaluate_domains(merged_state(trunk, modules, 1.0))
    for prefix in (False, True):
        for k in (1, 2):
            name = f"routed top-{k}" + (", prefix scores" if prefix else "")
            log(name)
            rows[name] = task.evaluate_domains(trunk, routed_forward(modules, task, k, prefix))
    result = {
        "benchmark": "modules",
        "config": {**vars(args), "task_args": task_args, "params": task.num_params()},
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.machine(),
        },
        "record_bytes": record_bytes,
        "bpb": rows,
        "gate_top1_own_share": gate_hits(task, trunk, modules, False),
        "gate_top1_own_share_prefix": gate_hits(task, trunk, modules, True),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    emit(result, args.json, table(result))


def table(result: dict) -> str:
    lines = ["| model | " + " | ".join(DOMAINS) + " | overall |", "|---" * (len(DOMAINS) + 2) + "|"]
    for name, s in result["bpb"].items():
        cells = ["-" if s.get(d) is None else f"{s[d]:.3f}" for d in (*DOMAINS, "overall")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for key, what in (("gate_top1_own_share", "token"), ("gate_top1_own_share_prefix", "prefix")):
        hits = result[key]
        lines.append(
            f"| top-1 gate = own module ({what}) | " + " | ".join(f"{hits[d]:.0%}" for d in DOMAINS) + " | |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
