"""potluck.tasks.lm_modules: a module (adapter, then gate), the trunk with modules routed or merged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from potluck.identity import NodeIdentity
from potluck.modules.record import Module
from potluck.tasks import TaskError, get_task
from potluck.tasks.lm import LmTask
from potluck.tasks.lm_modules import (
    calibrate_gate,
    default_targets,
    merged_state,
    routed_forward,
    train_module,
)

SMALL = {"n_layer": 1, "n_head": 2, "d_model": 32, "context": 32, "batch": 4, "eval_bytes": 512}
TRUNK = "00" * 32


@pytest.fixture(scope="module")
def setup() -> tuple[LmTask, dict, list[Module]]:
    task = get_task("lm", SMALL)
    trunk = task.init_state(0)
    general = task.local_data(None)
    me = NodeIdentity.generate()
    modules = []
    for i, domain in enumerate(("plays", "scripture")):
        adapters, gw, gb = train_module(
            task, trunk, task.local_data(domain), general, steps=3, gate_steps=20, seed=i, rank=2
        )
        modules.append(Module("run", domain, me.public_key, 1, TRUNK, domain, adapters, gw, gb))
    return task, trunk, modules


def test_module_adapts_default_targets_with_a_gate(setup):
    task, _, (plays, _) = setup
    assert sorted(plays.adapters) == sorted(default_targets(task))
    a, b = plays.adapters["transformer.h.0.mlp.c_fc.weight"]
    assert a.shape == (32, 2) and b.shape == (2, 128) and np.abs(b).sum() > 0
    assert plays.gate_w.shape == (32,) and np.isfinite(plays.gate_w).all() and np.abs(plays.gate_w).sum() > 0


def test_one_module_routed_is_that_module_merged(setup):
    task, trunk, (plays, _) = setup
    x = torch.from_numpy(np.frombuffer(b"To be, or not to be: that is th", np.uint8).astype(np.int64))[None]
    with torch.no_grad():
        routed = routed_forward([plays], task, 1)(task._params(trunk), x)
        merged = task.forward(task._params(merged_state(trunk, [plays], 1.0)), x)
        plain = task.forward(task._params(trunk), x)
    assert torch.allclose(routed, merged, atol=1e-4) and not torch.allclose(routed, plain, atol=1e-4)


def test_routing_follows_the_gates(setup):
    task, trunk, (plays, scripture) = setup
    # a gate that always loses: top-1 routing never uses that module, so it is the other one alone
    loser = Module(**{**scripture.__dict__, "gate_w": np.zeros(32, np.float32), "gate_b": -1e6})
    got = task.evaluate_domains(trunk, routed_forward([plays, loser], task, 1))
    assert got == pytest.approx(task.evaluate_domains(trunk, routed_forward([plays], task, 1)), abs=1e-6)
    both = task.evaluate_domains(trunk, routed_forward([plays, scripture], task, 2))
    assert both["overall"] != pytest.approx(got["overall"], abs=1e-6)


def test_merged_mean_and_errors(setup):
    task, trunk, modules = setup
    merged = merged_state(trunk, modules)
    name = "transformer.h.0.attn.c_attn.weight"
    want = trunk[name] + sum((a @ b for a, b in (m.adapters[name] for m in modules))) / 2
    assert np.allclose(merged[name], want, atol=1e-6)
    assert np.array_equal(merged["transformer.wte.weight"], trunk["transformer.wte.weight"])
    with pytest.raises(TaskError, match="at least one module"):
        routed_forward([], task, 1)
    with pytest.raises(TaskError, match="does not have in that shape"):
        merged_state({k: v for k, v in trunk.items() if k != name}, modules)


def test_calibrated_gate_scores_general_text_as_z_scores(setup):
    task, trunk, (plays, _) = setup
    general = task.local_data(None)
    w, b = calibrate_gate(task, trunk, (plays.gate_w, plays.gate_b), general, seed=0, windows=16)
    rng = np.random.Generator(np.random.PCG64([0, 11]))  # the same windows calibrate_gate drew
    starts = rng.integers(0, len(general) - task.context, size=16)
    x = torch.from_numpy(general.text[starts[:, None] + np.arange(task.context)].astype(np.int64))
    with torch.no_grad():
        h = task.hidden(task._params(trunk), x)
    scores = (h @ torch.from_numpy(w) + b).double()
    assert abs(float(scores.mean())) < 1e-4 and abs(float(scores.std()) - 1) < 1e-4
    raw = (h @ torch.from_numpy(plays.gate_w) + plays.gate_b).double()
    assert (
        float(torch.corrcoef(torch.stack([raw.flatten(), scores.flatten()]))[0, 1]) > 0.9999
    )  # rescaled only
