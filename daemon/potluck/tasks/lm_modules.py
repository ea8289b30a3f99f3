"""Modules for the lm task: training one (adapter, then its gate), running the trunk with modules.

* :func:`train_module`: a LoRA adapter on ``targets`` trained on the contributor's own text
  (:meth:`LmTask.train_lowrank`, the trunk frozen), then, the adapter fixed, its gate: a logistic
  score ``w . h + b`` on the trunk's final hidden state ``h`` (no adapter applied), ``gate_steps``
  Adam steps telling the bytes of the module's own text (label 1) from the bytes of ``general`` text
  (label 0; e.g. every domain's training split), ``batch`` windows of each per step.
* :func:`calibrate_gate`: a trained gate rescaled to z-scores on general text (optional).
* :func:`routed_forward`: the trunk with modules routed per token (by the token's gate scores or their
  mean over its prefix), by the rule of
  :mod:`potluck.modules.routing` (one trunk pass for the gate scores, one adapted pass).
* :func:`merged_state`: the trunk with ``c * sum A @ B`` of the chosen modules added (the mean).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from potluck.modules.record import Module
from potluck.modules.routing import gate_matrix, merged_deltas, prefix_mean, route_weights
from potluck.tasks import State, TaskError
from potluck.tasks.data import OneThread, check_training
from potluck.tasks.lm import Forward, LmData, LmTask

__all__ = [
    "calibrate_gate",
    "default_targets",
    "merged_state",
    "routed_forward",
    "train_gate",
    "train_module",
]

DEFAULT_TARGETS = ("attn.c_attn.weight", "mlp.c_fc.weight")  # per block


def default_targets(task: LmTask) -> list[str]:
    return [f"transformer.h.{i}.{t}" for i in range(task.n_layer) for t in DEFAULT_TARGETS]


def train_gate(
    task: LmTask, state: Mapping[str, np.ndarray], own: LmData, general: LmData, *, steps: int, seed: int,
    lr: float = 0.01, progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, float]:  # fmt: skip
    """The gate ``(w, b)`` for ``own`` text against ``general`` text (see the module doc); ``progress``
    is called with the steps done after each step."""
    check_training(steps, seed)
    rng = np.random.Generator(np.random.PCG64([seed, 7]))
    window = np.arange(task.context)
    w = torch.zeros(task.d_model, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    with OneThread():
        params = task._params(state)
        for step in range(steps):
            xs, ys = [], []
            for data, label in ((own, 1.0), (general, 0.0)):
                starts = rng.integers(0, len(data) - task.context, size=task.batch)
                xs.append(torch.from_numpy(data.text[starts[:, None] + window].astype(np.int64)))
                ys.append(torch.full((task.batch, task.context), label))
            with torch.no_grad():
                h = task.hidden(params, torch.cat(xs))
            opt.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(h @ w + b, torch.cat(ys))
            loss.backward()
            opt.step()
            if progress is not None:
                progress(step + 1)
    return w.detach().numpy().copy(), float(b.detach()[0])


def calibrate_gate(
    task: LmTask, state: Mapping[str, np.ndarray], gate: tuple[np.ndarray, float], general: LmData, *,
    seed: int, windows: int = 64,
) -> tuple[np.ndarray, float]:  # fmt: skip
    """The gate rescaled so its scores on ``windows`` seeded windows of ``general`` text have mean 0 and
    standard deviation 1 (z-scores: comparable across modules whose gates were trained apart)."""
    rng = np.random.Generator(np.random.PCG64([seed, 11]))
    starts = rng.integers(0, len(general) - task.context, size=windows)
    x = torch.from_numpy(general.text[starts[:, None] + np.arange(task.context)].astype(np.int64))
    w, b = gate
    with OneThread(), torch.no_grad():
        scores = (task.hidden(task._params(state), x) @ torch.from_numpy(w) + b).double()
    mu, sigma = float(scores.mean()), max(float(scores.std()), 1e-6)
    return (w / sigma).astype(np.float32), (b - mu) / sigma


def train_module(
    task: LmTask, state: Mapping[str, np.ndarray], own: LmData, general: LmData, *, steps: int,
    gate_steps: int, seed: int, rank: int, targets: Sequence[str] | None = None, gate_lr: float = 0.01,
    progress: Callable[[str, int], None] | None = None,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray, float]:  # fmt: skip
    """``(adapters, gate_w, gate_b)``: the adapter first, then its gate (see the module doc);
    ``progress`` is called with ``("adapter" | "gate", steps done)`` after each step."""
    chosen = list(targets) if targets else default_targets(task)

    def part(what: str) -> Callable[[int], None] | None:
        return None if progress is None else lambda n: progress(what, n)

    adapters, _ = task.train_lowrank(
        state, own, steps=steps, seed=seed, rank=rank, targets=chosen, progress=part("adapter")
    )
    gate_w, gate_b = train_gate(
        task, state, own, general, steps=gate_steps, seed=seed, lr=gate_lr, progress=part("gate")
    )
    return adapters, gate_w, gate_b


def routed_forward(modules: Sequence[Module], task: LmTask, k: int, prefix: bool = False) -> Forward:
    """A forward (params, ids) -> logits: the trunk with ``modules`` routed per token, top-``k``, by each
    token's own gate scores or (``prefix``) their mean over its prefix (potluck.modules.routing)."""
    if not modules:
        raise TaskError("lm: routing needs at least one module")
    gw, gb = (torch.from_numpy(x) for x in gate_matrix(modules))
    factors = [
        {n: (torch.from_numpy(a), torch.from_numpy(b)) for n, (a, b) in m.adapters.items()} for m in modules
    ]

    def forward(params: Mapping[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        scores = task.hidden(params, idx) @ gw.T + gb  # (B, T, M), from the trunk alone
        scores = prefix_mean(scores.numpy()) if prefix else scores.numpy()
        weights = torch.from_numpy(route_weights(scores, k))

        def linear(name: str, x: torch.Tensor) -> torch.Tensor:
            out = x @ params[name]
            for i, f in enumerate(factors):
                if name in f and bool((weights[..., i] > 0).any()):
                    a, b = f[name]
                    out = out + weights[..., i : i + 1] * ((x @ a) @ b)
            return out

        return task.hidden(params, idx, linear) @ params["transformer.wte.weight"].T

    return forward


def merged_state(
    state: Mapping[str, np.ndarray], modules: Sequence[Module], coefficient: float | None = None
) -> State:
    """``state`` plus the modules' mean delta (or ``coefficient`` x their sum) on each adapted tensor."""
    out = dict(state)
    for name, delta in merged_deltas(modules, coefficient).items():
        if name not in out or out[name].shape != delta.shape:
            raise TaskError(f"lm: a module adapts {name}, which the trunk does not have in that shape")
        out[name] = (out[name] + delta).astype(np.float32)
    return out
