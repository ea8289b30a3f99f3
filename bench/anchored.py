"""Fine-tunes that stay near the genesis, for one-shot merging: bench/lm.py's retention recipe.

A group fine-tunes the genesis on its own domain with Adam (as ``LmTask.train``), and two things are meant
to keep its delta from hurting the other groups' domains once the deltas are summed (task arithmetic):

- a **KL anchor on the genesis's own samples**: before training, the group samples ``samples``
  windows of ``context + 1`` bytes from the genesis (temperature 1, each starting at a newline; no
  other group's data), and each step adds ``kl x KL(genesis || model)`` on a seeded batch of them to
  the loss on its own text. The genesis writes every domain, so the penalty holds the model's
  predictions where they are on general text and leaves the group to change what it predicts on
  its own domain's (self-synthesized rehearsal: the rehearsal data comes from the model itself);
- a **trust region**: after every step the delta is scaled back to RMS ``radius`` (over all the
  model's entries) when it is larger.

Why (bench/README.md#lm): summed plain fine-tunes lose most of every domain's gain even when each delta
is held to an RMS of 0.001 (and make the domains worse than the genesis at larger ones); the KL is what
let the sum work there (the reading that fits: each fine-tune first moves the model's predictions on
all text, its domain's byte prior, and the anchor charges for that), the radius keeps the rest small
enough to add. Measured: task arithmetic keeps >= 90% of every domain's own gain in 8 runs of 12 (every
seed at 120k with 4096 samples), but the own gains shrink to a quarter-half and the merged model's BPB
stays above the plain fine-tunes' mean merge, so neither potluck nor ``potluck join`` uses it.
Deterministic: the samples and batches are seeded.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

NEWLINE = 10


def genesis_samples(
    task, genesis: Mapping[str, np.ndarray], n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` windows of ``context + 1`` bytes sampled from ``genesis`` (seeded) and the genesis's
    log-probabilities on their first ``context`` positions (the KL anchor's targets)."""
    gen = torch.Generator().manual_seed(seed)
    params = task._params(genesis)
    x = torch.full((n, 1), NEWLINE, dtype=torch.int64)
    with torch.no_grad():
        for _ in range(task.context):
            probs = torch.softmax(task.forward(params, x[:, -task.context :])[:, -1], dim=-1)
            x = torch.cat([x, torch.multinomial(probs, 1, generator=gen)], dim=1)
        return x, torch.log_softmax(task.forward(params, x[:, :-1]), dim=-1)


def anchored_finetune(
    task, genesis: Mapping[str, np.ndarray], data, *, steps: int, seed: int, lr: float, kl: float,
    samples: int, radius: float,
) -> tuple[dict[str, np.ndarray], int]:  # fmt: skip
    """``steps`` Adam steps (the task's betas and gradient clip) on ``data`` from ``genesis``, plus
    ``kl x KL(genesis || model)`` on ``samples`` genesis windows (0: no anchor), the delta's RMS
    held at most ``radius`` (0: no bound). Returns the fine-tuned state and the sample count."""
    params = task._params(genesis, grad=True)
    start = {k: p.detach().clone() for k, p in params.items()}
    size = sum(p.numel() for p in params.values())
    anchor = genesis_samples(task, genesis, samples, seed) if kl and samples else None
    rng = np.random.Generator(np.random.PCG64([seed, 3]))
    window = np.arange(task.context + 1)
    opt = torch.optim.Adam(list(params.values()), lr=lr, betas=(0.9, 0.95))
    for _ in range(steps):
        starts = rng.integers(0, len(data) - task.context, size=task.batch)
        chunk = torch.from_numpy(data.text[starts[:, None] + window].astype(np.int64))
        opt.zero_grad(set_to_none=True)
        logits = task.forward(params, chunk[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))
        if anchor is not None:
            xs, target = anchor
            pick = torch.from_numpy(rng.integers(0, xs.shape[0], size=task.batch))
            log_q = torch.log_softmax(task.forward(params, xs[pick, :-1]), dim=-1)
            p = target[pick]
            loss = loss + kl * (p.exp() * (p - log_q)).sum(-1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        if radius:
            with torch.no_grad():
                rms = (sum(float(((p - start[k]) ** 2).sum()) for k, p in params.items()) / size) ** 0.5
                if rms > radius:
                    for k, p in params.items():
                        p.copy_(start[k] + (p - start[k]) * (radius / rms))
    out = {k: p.detach().numpy().copy() for k, p in params.items()}
    return out, min(steps * task.batch * task.context, len(data))
