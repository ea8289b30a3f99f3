"""The "lm" task: a small decoder-only transformer over bytes (vocab 256, no tokenizer) trained on the
shipped three-domain corpus (:mod:`potluck.tasks.corpus`); scored in bits per byte (BPB, lower is
better) on each domain's held-out documents.

* The model is GPT-2's architecture written in plain torch (pre-LayerNorm blocks, causal
  self-attention, tanh-GELU MLP, learned positions, output head tied to the byte embedding), with
  GPT-2's tensor names and layouts (``transformer.h.0.attn.c_attn.weight`` is ``(d, 3d)``, applied
  as ``x @ W + b``): a version saved with :meth:`LmTask.hf_config` as ``config.json`` loads with
  ``transformers``' ``GPT2LMHeadModel.from_pretrained``. Plain torch rather than ``transformers``
  itself: the bytes every node must agree on come from code potluck pins, not from an 18-package
  dependency (~175 MB installed) whose forward pass may change between its releases.
* Init (GPT-2's): normal(0, 0.02), residual projections 0.02/sqrt(2 n_layer), LayerNorm 1 and 0,
  biases 0, drawn in float64 from one PCG64(seed) stream in name order and cast once to float32.
* Training: ``steps`` Adam steps on ``batch`` windows of ``context + 1`` bytes at seeded random
  offsets in the shard's text, gradients clipped to norm 1, on one thread (deterministic); given an
  ``optimizer`` dict, Adam continues from the state a previous call left there (a contributor's
  rounds, potluck.contribute); :meth:`LmTask.gradient_scale` reads that state's per-entry gradient
  scale (``potluck join --salience`` ranks its top-k by it).
* Low-rank training (:meth:`LmTask.train_lowrank`, ``potluck join --lowrank``): LoRA adapters on
  chosen 2-D tensors, the model frozen, at learning rate ``lora_lr``; the adapters are published
  as low-rank update entries.
* Modules (potluck.tasks.lm_modules): :meth:`LmTask.hidden` takes a ``linear(name, x)`` that computes
  each block matrix's product, so adapters can be added per token; evaluation and generation take a
  ``forward`` that replaces :meth:`LmTask.forward`.
* Evaluation: the first ``eval_bytes`` bytes of each domain's held-out text, cut into windows of
  ``context + 1`` bytes (every byte after the first predicted once); BPB = mean cross-entropy / ln 2.
  :meth:`LmTask.evaluate` returns the overall BPB (every domain weighs ``eval_bytes``).
* Task args: ``n_layer`` (4), ``n_head`` (4), ``d_model`` (128), ``context`` (128): ~0.84M parameters;
  GPT-2 small is ``n_layer=12, n_head=12, d_model=768, context=1024``. ``lr`` (0.003), ``lora_lr``
  (the adapters' lr; default ``lr``), ``batch`` (8), ``eval_bytes`` (8192).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from potluck.tasks import State, TaskError, register_task
from potluck.tasks.corpus import DOMAINS, held_out_text, joined, shard_documents
from potluck.tasks.data import OneThread, check_number, check_training

__all__ = ["VOCAB", "LmData", "LmTask"]

VOCAB = 256
_EPS = 1e-5
_EVAL_BATCH = 32  # windows per forward pass when scoring
Linear = Callable[[str, torch.Tensor], torch.Tensor]  # (matrix name, input) -> input @ matrix (+ adapters)
Forward = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]  # (params, ids) -> logits


@dataclass(frozen=True)
class LmData:
    """A contributor's text: its shard's documents joined by newlines, as uint8 bytes."""

    text: np.ndarray
    domains: tuple[str, ...]
    shard: str | None = None

    def __len__(self) -> int:
        return int(self.text.size)


class LmTask:
    """A TrainableTask: a byte-level GPT-2-shaped model on the shipped corpus; see the module doc."""

    name = "lm"
    metric = "bpb"  # what evaluate returns: bits per byte, lower is better
    higher_is_better = False

    def __init__(
        self, n_layer: int = 4, n_head: int = 4, d_model: int = 128, context: int = 128, lr: float = 0.003,
        batch: int = 8, eval_bytes: int = 8192, lora_lr: float | None = None,
    ) -> None:  # fmt: skip
        self.n_layer = int(check_number(n_layer, "lm: n_layer", integer=True, high=48))
        self.n_head = int(check_number(n_head, "lm: n_head", integer=True, high=64))
        self.d_model = int(check_number(d_model, "lm: d_model", integer=True, high=4096))
        self.context = int(check_number(context, "lm: context", integer=True, high=4096))
        self.lr = float(check_number(lr, "lm: lr", high=10.0))
        self.lora_lr = self.lr if lora_lr is None else float(check_number(lora_lr, "lm: lora_lr", high=10.0))
        self.batch = int(check_number(batch, "lm: batch", integer=True, high=4096))
        self.eval_bytes = int(check_number(eval_bytes, "lm: eval_bytes", integer=True, high=1 << 24))
        if self.d_model % self.n_head:
            raise TaskError(f"lm: d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")
        if self.context < 2:
            raise TaskError(f"lm: context must be at least 2, got {self.context}")

    # ---- the model ------------------------------------------------------------------------------

    def shapes(self) -> dict[str, tuple[int, ...]]:
        d = self.d_model
        shapes: dict[str, tuple[int, ...]] = {
            "transformer.wte.weight": (VOCAB, d),
            "transformer.wpe.weight": (self.context, d),
        }
        for i in range(self.n_layer):
            h = f"transformer.h.{i}."
            shapes |= {
                h + "ln_1.weight": (d,), h + "ln_1.bias": (d,),
                h + "attn.c_attn.weight": (d, 3 * d), h + "attn.c_attn.bias": (3 * d,),
                h + "attn.c_proj.weight": (d, d), h + "attn.c_proj.bias": (d,),
                h + "ln_2.weight": (d,), h + "ln_2.bias": (d,),
                h + "mlp.c_fc.weight": (d, 4 * d), h + "mlp.c_fc.bias": (4 * d,),
                h + "mlp.c_proj.weight": (4 * d, d), h + "mlp.c_proj.bias": (d,),
            }  # fmt: skip
        return shapes | {"transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)}

    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes().values())

    def init_state(self, seed: int) -> State:
        rng = np.random.Generator(np.random.PCG64(seed))
        state: State = {}
        for name, shape in self.shapes().items():  # fixed order: the stream is part of the format
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                state[name] = np.ones(shape, np.float32)
            elif name.endswith(".bias"):
                state[name] = np.zeros(shape, np.float32)
            else:
                std = 0.02 / math.sqrt(2 * self.n_layer) if name.endswith("c_proj.weight") else 0.02
                state[name] = (rng.standard_normal(shape) * std).astype(np.float32)
        return state

    def hf_config(self) -> dict[str, Any]:
        """``config.json`` for ``transformers``' GPT2LMHeadModel holding this task's state."""
        return {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": VOCAB,
            "n_positions": self.context, "n_embd": self.d_model, "n_layer": self.n_layer,
            "n_head": self.n_head, "n_inner": None, "activation_function": "gelu_new",
            "layer_norm_epsilon": _EPS, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "tie_word_embeddings": True, "bos_token_id": 10, "eos_token_id": 10,
        }  # fmt: skip

    def forward(
        self, p: Mapping[str, torch.Tensor], idx: torch.Tensor, linear: Linear | None = None
    ) -> torch.Tensor:
        """Logits (B, T, 256) for byte ids ``idx`` (B, T), T <= context."""
        return self.hidden(p, idx, linear) @ p["transformer.wte.weight"].T

    def hidden(
        self, p: Mapping[str, torch.Tensor], idx: torch.Tensor, linear: Linear | None = None
    ) -> torch.Tensor:
        """The final (post-LayerNorm) hidden states (B, T, d_model). ``linear(name, x)`` computes each
        block matrix's ``x @ p[name]`` (default), so a caller can add adapters per token (modules)."""
        lin = linear or (lambda name, z: z @ p[name])
        b, t = idx.shape
        d, heads = self.d_model, self.n_head
        x = p["transformer.wte.weight"][idx] + p["transformer.wpe.weight"][:t]
        for i in range(self.n_layer):
            h = f"transformer.h.{i}."
            a = F.layer_norm(x, (d,), p[h + "ln_1.weight"], p[h + "ln_1.bias"], _EPS)
            q, k, v = (lin(h + "attn.c_attn.weight", a) + p[h + "attn.c_attn.bias"]).split(d, dim=2)
            q, k, v = (z.view(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
            x = x + lin(h + "attn.c_proj.weight", y) + p[h + "attn.c_proj.bias"]
            m = F.layer_norm(x, (d,), p[h + "ln_2.weight"], p[h + "ln_2.bias"], _EPS)
            m = F.gelu(lin(h + "mlp.c_fc.weight", m) + p[h + "mlp.c_fc.bias"], approximate="tanh")
            x = x + lin(h + "mlp.c_proj.weight", m) + p[h + "mlp.c_proj.bias"]
        return F.layer_norm(x, (d,), p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], _EPS)

    def _params(self, state: Mapping[str, np.ndarray], grad: bool = False) -> dict[str, torch.Tensor]:
        shapes = self.shapes()
        if set(state) != set(shapes):
            raise TaskError(f"lm: the state's tensors are not this model's ({len(state)} vs {len(shapes)})")
        params = {}
        for name, shape in shapes.items():
            value = np.asarray(state[name], dtype=np.float32)
            if value.shape != shape:
                raise TaskError(f"lm: {name} has shape {value.shape}, this model's is {shape}")
            params[name] = torch.tensor(value).requires_grad_(grad)
        return params

    # ---- data, training, evaluation -----------------------------------------------------------------

    def local_data(self, shard: str | None = None, seed: int = 0) -> LmData:
        """The training text of ``shard`` (see potluck.tasks.corpus); ``seed`` is ignored."""
        docs = shard_documents(shard)
        text = joined([doc for _, doc in docs])
        if text.size < self.context + 1:
            raise TaskError(f"lm: shard {shard!r} holds {text.size} bytes, fewer than context + 1")
        return LmData(text, tuple(sorted({d for d, _ in docs}, key=DOMAINS.index)), shard)

    def train(
        self,
        state: Mapping[str, np.ndarray],
        data: LmData,
        *,
        steps: int,
        seed: int,
        progress: Callable[[int], None] | None = None,
        optimizer: dict[str, Any] | None = None,
    ) -> tuple[State, int]:
        """``optimizer``: a dict the caller keeps between calls; Adam continues from the moments and
        step count it holds (if any) and leaves its own there, so a contributor runs one optimizer
        across rounds instead of a fresh one from each V_r (its state is local: it is never sent)."""
        check_training(steps, seed)
        with OneThread():
            params = self._params(state, grad=True)
            self._fit(list(params.values()), lambda: params, data, steps, seed, progress, optimizer)
            out = {k: p.detach().numpy().copy() for k, p in params.items()}
        return out, min(steps * self.batch * self.context, len(data))

    def train_lowrank(
        self, state: Mapping[str, np.ndarray], data: LmData, *, steps: int, seed: int, rank: int,
        targets: list[str], progress: Callable[[int], None] | None = None, extras: Collection[str] = (),
        a_seed: int | None = None,
    ) -> tuple[dict[str, Any], int]:  # fmt: skip
        """LoRA: ``steps`` Adam steps on rank-``rank`` adapters of the 2-D tensors ``targets``, every
        model tensor frozen; returns ``{name: (A, B)}`` (A: rows x rank, B: rank x cols, delta A @ B,
        potluck.updates.lowrank) and the sample count. A starts seeded normal(0, 1/sqrt(rows)), B at
        zero (the first step starts from the base model). Deterministic like :meth:`train`. A fresh
        Adam every call: carrying it over rounds (A restarted from one seed) measured worse in
        bench/lm.py (bench/README.md#lm), so this takes no ``optimizer``. ``extras``: model tensors
        (not targets; e.g. the biases and LayerNorms) trained whole alongside the adapters, their
        deltas returned as ``{name: delta}`` in the same dict. ``a_seed``: draw A from this seed
        instead of ``seed`` (contributors of one round that share it share A, so their merged
        factors add up coherently)."""
        check_training(steps, seed)
        shapes = self.shapes()
        for name in targets:
            if len(shapes.get(name, ())) != 2:
                raise TaskError(f"lm: no 2-D tensor {name!r} to adapt (the model's: {sorted(shapes)[:3]}...)")
            if not 1 <= rank <= min(shapes[name]):
                raise TaskError(f"lm: rank {rank} is not in [1, {min(shapes[name])}] for {name}")
        extras = sorted(extras)
        for name in extras:
            if name not in shapes or name in targets:
                raise TaskError(f"lm: {name!r} is not a model tensor to train beside the adapters")
        rng = np.random.Generator(np.random.PCG64([seed if a_seed is None else a_seed, 5]))
        with OneThread():
            params = self._params(state)
            for name in extras:
                params[name].requires_grad_(True)
            adapters = {}
            for name in sorted(targets):
                rows, cols = shapes[name]
                a = rng.standard_normal((rows, rank)) / math.sqrt(rows)
                adapters[name] = (torch.tensor(a, dtype=torch.float32, requires_grad=True),
                                  torch.zeros(rank, cols, requires_grad=True))  # fmt: skip

            def adapted() -> dict[str, torch.Tensor]:
                return params | {n: params[n] + a @ b for n, (a, b) in adapters.items()}

            trainable = [t for pair in adapters.values() for t in pair] + [params[n] for n in extras]
            self._fit(trainable, adapted, data, steps, seed, progress, lr=self.lora_lr)
            out: dict[str, Any] = {
                n: (a.detach().numpy().copy(), b.detach().numpy().copy()) for n, (a, b) in adapters.items()
            }
            out |= {n: params[n].detach().numpy() - np.asarray(state[n], np.float32) for n in extras}
        return out, min(steps * self.batch * self.context, len(data))

    def gradient_scale(self, optimizer: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Each tensor's per-entry gradient scale, sqrt of Adam's second moment, from an ``optimizer``
        dict :meth:`train` left (empty before the first call): ``potluck join --salience`` ranks its
        top-k by ``|residual| * scale ** s`` (bench/README.md#lm)."""
        if "adam" not in optimizer:
            return {}
        moments = optimizer["adam"]["state"]
        return {
            name: np.sqrt(moments[i]["exp_avg_sq"].numpy()).astype(np.float32)
            for i, name in enumerate(self.shapes())
            if i in moments
        }

    def _fit(
        self, trainable: list[torch.Tensor], params: Callable[[], Mapping[str, torch.Tensor]], data: LmData,
        steps: int, seed: int, progress: Callable[[int], None] | None, carry: dict[str, Any] | None = None,
        lr: float | None = None,
    ) -> None:  # fmt: skip
        """Adam on ``trainable``, the loss of the model ``params()`` on seeded windows of ``data``;
        continued from and saved to ``carry`` when given (see :meth:`train`)."""
        rng = np.random.Generator(np.random.PCG64([seed, 3]))
        window = np.arange(self.context + 1)
        opt = torch.optim.Adam(trainable, lr=lr or self.lr, betas=(0.9, 0.95))
        if carry and "adam" in carry:
            opt.load_state_dict(carry["adam"])
        for step in range(steps):
            starts = rng.integers(0, len(data) - self.context, size=self.batch)
            chunk = torch.from_numpy(data.text[starts[:, None] + window].astype(np.int64))
            opt.zero_grad(set_to_none=True)
            logits = self.forward(params(), chunk[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), chunk[:, 1:].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            if progress is not None:
                progress(step + 1)
        if carry is not None:
            carry["adam"] = copy.deepcopy(opt.state_dict())

    def evaluate_domains(
        self, state: Mapping[str, np.ndarray], forward: Forward | None = None
    ) -> dict[str, float]:
        """Held-out BPB per domain and ``"overall"`` (total bits over total predicted bytes); ``forward``
        replaces :meth:`forward` (e.g. the trunk with modules routed, potluck.tasks.lm_modules)."""
        forward = forward or self.forward
        bits: dict[str, float] = {}
        counts: dict[str, int] = {}
        with OneThread(), torch.no_grad():
            params = self._params(state)
            for domain in DOMAINS:
                text = held_out_text(domain)[: self.eval_bytes]
                windows = [text[s : s + self.context + 1] for s in range(0, text.size - 1, self.context)]
                nats, count = 0.0, 0
                for group in _by_length(windows):
                    for at in range(0, len(group), _EVAL_BATCH):
                        x = torch.from_numpy(np.stack(group[at : at + _EVAL_BATCH]).astype(np.int64))
                        logits = forward(params, x[:, :-1])
                        nats += float(F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1),
                                                      reduction="sum").double())  # fmt: skip
                        count += x[:, 1:].numel()
                bits[domain], counts[domain] = nats / math.log(2), count
        result = {d: bits[d] / counts[d] for d in DOMAINS}
        result["overall"] = sum(bits.values()) / sum(counts.values())
        return result

    def evaluate(self, state: Mapping[str, np.ndarray]) -> float:
        """Overall held-out bits per byte (lower is better; 8.0 is a uniform guess)."""
        return self.evaluate_domains(state)["overall"]

    def generate(self, state: Mapping[str, np.ndarray], prompt: bytes, length: int, *, seed: int = 0,
                 temperature: float = 0.8, forward: Forward | None = None) -> bytes:  # fmt: skip
        """``length`` bytes sampled after ``prompt`` (seeded: the same bytes for the same inputs);
        ``forward`` as in :meth:`evaluate_domains`."""
        forward = forward or self.forward
        out = list(prompt or b"\n")
        gen = torch.Generator().manual_seed(seed)
        with OneThread(), torch.no_grad():
            params = self._params(state)
            for _ in range(length):
                x = torch.tensor([out[-self.context :]], dtype=torch.int64)
                probs = torch.softmax(forward(params, x)[0, -1] / max(temperature, 1e-3), dim=0)
                out.append(int(torch.multinomial(probs, 1, generator=gen)))
        return bytes(out[len(prompt or b"\n") :])


def _by_length(windows: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Windows grouped by length (only the last one may be shorter), to stack each group."""
    groups: dict[int, list[np.ndarray]] = {}
    for w in windows:
        if w.size >= 2:
            groups.setdefault(w.size, []).append(w)
    return list(groups.values())


register_task("lm", LmTask)
