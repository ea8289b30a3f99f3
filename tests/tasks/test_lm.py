"""The lm task: a byte-level GPT-2-shaped transformer, deterministic genesis, training and BPB."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from potluck.contribute import takes_optimizer
from potluck.hashing import version_hash
from potluck.tasks import TaskError, TrainableTask, builtin_tasks, genesis, get_task, is_trainable, metric
from potluck.tasks.lm import LmTask

SMALL = {"n_layer": 1, "n_head": 2, "d_model": 32, "context": 32, "eval_bytes": 1024}


@pytest.fixture(scope="module")
def small() -> LmTask:
    return get_task("lm", SMALL)


def test_registered_trainable_and_names_its_metric(small):
    assert "lm" in builtin_tasks() and small.name == "lm"
    assert is_trainable(small) and isinstance(small, TrainableTask)
    assert metric(small) == ("bpb", False)
    assert metric(get_task("digits")) == ("accuracy", True)


def test_default_size_and_gpt2_small_shape():
    task = get_task("lm")
    assert 800_000 < task.num_params() < 1_200_000  # ~1M: a round of training fits 2 cores
    big = get_task("lm", {"n_layer": 12, "n_head": 12, "d_model": 768, "context": 1024})
    shapes = big.shapes()
    assert shapes["transformer.h.11.attn.c_attn.weight"] == (768, 2304)
    assert shapes["transformer.wpe.weight"] == (1024, 768)
    assert 85_000_000 < big.num_params() < 87_000_000  # GPT-2 small's 124M less its 50257-token embedding


def test_genesis_is_deterministic(small):
    a, b = small.init_state(7), get_task("lm", SMALL).init_state(7)
    assert version_hash(a) == version_hash(b) != version_hash(small.init_state(8))
    assert all(v.dtype == np.float32 for v in a.values())
    assert list(a) == list(small.shapes()) and all(a[k].shape == s for k, s in small.shapes().items())
    assert np.all(a["transformer.h.0.ln_1.weight"] == 1) and np.all(a["transformer.h.0.mlp.c_fc.bias"] == 0)
    assert abs(float(a["transformer.wte.weight"].std()) - 0.02) < 0.002
    # pinned: a change here changes every lm run's genesis
    assert genesis(get_task("lm"), 0)[1] == "02a43038bb25bd87c9b6d82c357c89c68390cf05a39b96a0d8501b7ac5d53e33"


def test_forward_shapes(small):
    params = {k: torch.from_numpy(v) for k, v in small.init_state(0).items()}
    idx = torch.randint(0, 256, (3, 20))
    assert small.forward(params, idx).shape == (3, 20, 256)


def test_a_uniform_model_scores_exactly_8_bits_per_byte(small):
    state = small.init_state(0)
    state["transformer.wte.weight"][:] = 0  # the tied head then gives every byte the same logit
    scores = small.evaluate_domains(state)
    assert set(scores) == {"plays", "scripture", "poetry", "overall"}
    assert all(v == pytest.approx(8.0, abs=1e-5) for v in scores.values())


def test_evaluation_is_deterministic_and_training_lowers_bpb(small):
    state = small.init_state(0)
    before = small.evaluate_domains(state)
    assert before == small.evaluate_domains(state) and small.evaluate(state) == before["overall"]
    data = small.local_data("plays")
    calls = []
    new, samples = small.train(state, data, steps=30, seed=1, progress=calls.append)
    assert calls == list(range(1, 31)) and samples == 30 * 8 * 32
    after = small.evaluate_domains(new)
    assert after["overall"] < before["overall"] - 1.0 and after["plays"] < before["plays"] - 1.0
    assert version_hash(state) == version_hash(small.init_state(0))  # input untouched


def test_training_is_deterministic(small):
    state, data = small.init_state(0), small.local_data("1/3")
    assert data.domains == ("scripture",)
    a, _ = small.train(state, data, steps=3, seed=11)
    b, _ = small.train(state, data, steps=3, seed=11)
    c, _ = small.train(state, data, steps=3, seed=12)
    assert version_hash(a) == version_hash(b) != version_hash(c)


def test_training_continues_the_optimizer_it_is_handed(small):
    """``optimizer=``: Adam's state is left in the dict and the next call continues from it (a
    different step than a fresh Adam's), deterministically; without the dict nothing changes."""
    state, data = small.init_state(0), small.local_data("0/3")
    carry: dict = {}
    first, _ = small.train(state, data, steps=3, seed=1, optimizer=carry)
    assert version_hash(first) == version_hash(small.train(state, data, steps=3, seed=1)[0])
    assert {s["step"].item() for s in carry["adam"]["state"].values()} == {3}
    kept = copy.deepcopy(carry)
    fresh, _ = small.train(first, data, steps=3, seed=2)
    a, _ = small.train(first, data, steps=3, seed=2, optimizer=carry)
    b, _ = small.train(first, data, steps=3, seed=2, optimizer=kept)
    assert version_hash(a) == version_hash(b) != version_hash(fresh)
    assert {s["step"].item() for s in carry["adam"]["state"].values()} == {6}


def test_gradient_scale_is_adams_second_moment_per_tensor(small):
    """What ``potluck join --salience`` weights its top-k by: sqrt(exp_avg_sq) of each tensor, by name."""
    state, data = small.init_state(0), small.local_data("0/3")
    carry: dict = {}
    assert small.gradient_scale(carry) == {}
    small.train(state, data, steps=2, seed=1, optimizer=carry)
    scales = small.gradient_scale(carry)
    assert {k: v.shape for k, v in scales.items()} == {k: v.shape for k, v in state.items()}
    moments = carry["adam"]["state"]
    wte = list(small.shapes()).index("transformer.wte.weight")
    np.testing.assert_array_equal(
        scales["transformer.wte.weight"], np.sqrt(moments[wte]["exp_avg_sq"].numpy())
    )
    assert all((v >= 0).all() and v.dtype == np.float32 for v in scales.values())
    assert any(v.max() > 0 for v in scales.values())


def test_lora_lr_sets_the_adapters_learning_rate_only(small):
    state, data = small.init_state(0), small.local_data("0/3")
    targets = ["transformer.h.0.mlp.c_fc.weight"]
    fast = get_task("lm", {**SMALL, "lora_lr": 0.03})
    assert fast.lr == small.lr and small.lora_lr == small.lr
    slow_ab = small.train_lowrank(state, data, steps=2, seed=0, rank=2, targets=targets)[0][targets[0]]
    fast_ab = fast.train_lowrank(state, data, steps=2, seed=0, rank=2, targets=targets)[0][targets[0]]
    assert np.abs(fast_ab[1]).max() > 5 * np.abs(slow_ab[1]).max()  # B starts at 0: lr sets its size
    assert version_hash(fast.train(state, data, steps=2, seed=0)[0]) == version_hash(
        small.train(state, data, steps=2, seed=0)[0]
    )


def test_the_contributor_hands_the_lm_task_an_optimizer_dict(small):
    assert takes_optimizer(small.train) and not takes_optimizer(small.train_lowrank)
    assert not takes_optimizer(get_task("toy").train)


def test_generate_is_seeded(small):
    state = small.init_state(0)
    out = small.generate(state, b"And ", 16, seed=3)
    assert len(out) == 16 and out == small.generate(state, b"And ", 16, seed=3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"d_model": 30, "n_head": 4}, "multiple of n_head"),
        ({"n_layer": 0}, "n_layer must be an integer"),
        ({"context": 1}, "context must be at least 2"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"lora_lr": -1}, "lora_lr must be"),
        ({"vocab": 100}, "unexpected keyword"),
    ],
)
def test_bad_args_get_a_clear_error(args, message):
    with pytest.raises(TaskError, match=message):
        get_task("lm", args)


def test_a_state_of_another_shape_is_refused(small):
    state = get_task("lm", {**SMALL, "d_model": 16}).init_state(0)
    with pytest.raises(TaskError, match="has shape"):
        small.evaluate(state)
    with pytest.raises(TaskError, match="not this model's"):
        small.evaluate({"x": np.zeros(1, np.float32)})


def test_an_exported_version_loads_in_transformers_with_the_same_logits(small, tmp_path):
    """The state names and layouts are GPT-2's: with hf_config as config.json, a version loads with
    from_pretrained. transformers is a test dependency only (the dev extra): potluck does not need it."""
    import transformers
    from safetensors.numpy import save_file

    state = small.train(small.init_state(0), small.local_data(), steps=5, seed=0)[0]
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(small.hf_config()))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = model(idx).logits
        ours = small.forward({k: torch.from_numpy(v) for k, v in state.items()}, idx)
    assert torch.allclose(theirs, ours, atol=1e-4), float((theirs - ours).abs().max())


@pytest.mark.multiprocess
def test_three_nodes_train_the_lm_and_hold_bit_identical_versions(tmp_path):
    """A keeper and two contributors (plays, scripture) on the smallest lm: two rounds, every node
    commits the same versions, whose stored bytes hash to them, and the held-out BPB falls."""
    import re
    import time

    from potluck.localswarm import LocalSwarm, wait_for
    from potluck.runfiles import write_run
    from potluck.store.versions import VersionStore
    from tests.support.cli import potluck, potluck_json

    run = write_run(
        tmp_path / "run.toml", "lm", task_args=SMALL, round_seconds=16.0, start_time=time.time() + 20.0,
        density=0.1,
    )  # fmt: skip
    genesis_bpb = get_task("lm", SMALL).evaluate(run.state)
    with LocalSwarm.for_run(tmp_path / "swarm", run.manifest.run_id, run.path) as swarm:
        keeper = swarm.add_node(name="keeper").wait_ready()
        for i in range(2):
            swarm.add_contributor(
                f"contributor{i}", "--shard", f"{i}/2", "--local-steps", "20", "--seed", str(i)
            )
        for node in swarm.nodes:
            node.wait_ready()

        def committed(round_: int) -> bool:
            return all(n.status()["committed_round"] >= round_ for n in swarm.nodes)

        until = run.manifest.start_time + 4 * run.manifest.round_seconds - time.time()
        wait_for(lambda: committed(1), until, "two rounds on every node")
        wait_for(lambda: keeper.status()["accuracy"] >= 0, 10, "the keeper's evaluation")
        logs = [[(e["round"], e["version"], e["contributors"]) for e in _log(n)] for n in swarm.nodes]
        assert all(log[:2] == logs[0][:2] for log in logs), logs
        assert [len(c) for _, _, c in logs[0][:2]] == [2, 2]  # both contributors made both rounds
        for node in swarm.nodes:
            for _, version, _ in logs[0][:2]:
                assert version_hash(VersionStore(node.data_dir / "versions").get(version)) == version
        bpb = _log(keeper)[1]["accuracy"]
        assert bpb is not None and bpb < genesis_bpb - 0.5  # the history stores the task's metric
        # the node keeps the run's manifest in its data dir: the tables name the metric, generate samples
        status = potluck("status", "--data-dir", str(keeper.data_dir), check=True).stdout
        assert re.search(r"^bpb +\d\.\d{4} on the held-out split \(lower is better\)$", status, re.M), status
        assert "BPB" in potluck("log", "--data-dir", str(keeper.data_dir), check=True).stdout.split("\n")[0]
        sample = potluck_json(
            "generate", "--data-dir", str(keeper.data_dir), "--prompt", "And ", "--round", "1"
        )
        assert sample["version"] == logs[0][1][1] and sample["text"]


@pytest.mark.multiprocess
def test_low_rank_and_sparse_contributors_merge_alike_and_a_frozen_group_is_refused(tmp_path):
    """A keeper, a LoRA contributor and a sparse one on the smallest lm, the position embedding frozen,
    the MLPs merged by TIES and the rest by the weighted mean (so gathered): two rounds with both updates
    in each, the same versions on every node, the frozen tensor unchanged, and an update that touches
    it refused by the keeper as ``frozen_tensor``."""
    import time

    from potluck.identity import NodeIdentity
    from potluck.localswarm import LocalSwarm, wait_for
    from potluck.runfiles import write_run
    from potluck.store.updates import UpdateStore
    from potluck.store.versions import VersionStore
    from potluck.updates.codec import EncodedTensor, SparseTensor, Update, encode_update, parse_update
    from potluck.updates.lowrank import EncodedLowRank
    from tests.support.cli import potluck

    frozen = "transformer.wpe.weight"
    run = write_run(
        tmp_path / "run.toml", "lm", task_args=SMALL, round_seconds=16.0, start_time=time.time() + 20.0,
        density=0.1, groups=("transformer.wpe.*:freeze", "*.attn.*:max_rank=4", "*.mlp.*:strategy=ties"),
    )  # fmt: skip
    with LocalSwarm.for_run(tmp_path / "swarm", run.manifest.run_id, run.path) as swarm:
        keeper = swarm.add_node(name="keeper").wait_ready()
        swarm.add_contributor("lora", "--shard", "0/2", "--local-steps", "20", "--lowrank", "4",
                              "--lowrank-targets", "transformer.h.*.weight",
                              "--lowrank-extras", "*.bias")  # fmt: skip
        swarm.add_contributor("sparse", "--shard", "1/2", "--local-steps", "20", "--seed", "1",
                              "--salience", "0.5", "--residual-decay", "0.9")  # fmt: skip
        for node in swarm.nodes:
            node.wait_ready()

        def committed(round_: int) -> bool:
            return all(n.status()["committed_round"] >= round_ for n in swarm.nodes)

        wait_for(lambda: committed(0), run.manifest.start_time + 2 * 16.0 - time.time(), "round 0")
        identity = NodeIdentity.generate()
        reason = ""
        for _ in range(3):  # the round may turn between reading the status and publishing
            st = keeper.status()
            wpe = SparseTensor(frozen, (32, 32), np.arange(4, dtype=np.int64), np.ones(4, np.float32))
            round_ = st["committed_round"] + 1  # the round updates are taken for
            update = Update(run.manifest.run_id, round_, st["version"], identity.public_key,
                            time.time_ns(), 8, (wpe,))  # fmt: skip
            (tmp_path / "frozen.update").write_bytes(encode_update(update, identity))
            proc = potluck("update", "publish", str(tmp_path / "frozen.update"), "--data-dir",
                           str(keeper.data_dir))  # fmt: skip
            reason = proc.stderr
            if "frozen_tensor" in reason:
                break
        assert proc.returncode == 1 and f"rejected: frozen_tensor: {frozen}" in reason, reason

        until = run.manifest.start_time + 5 * run.manifest.round_seconds - time.time()
        wait_for(lambda: committed(1), until, "two rounds on every node")
        logs = [[(e["round"], e["version"], e["contributors"]) for e in _log(n)] for n in swarm.nodes]
        assert all(log[:2] == logs[0][:2] for log in logs), logs
        assert [len(c) for _, _, c in logs[0][:2]] == [2, 2]  # the LoRA and the sparse one, both rounds
        genesis = VersionStore(keeper.data_dir / "versions").get(run.manifest.genesis)
        for node in swarm.nodes:
            for _, version, _ in logs[0][:2]:
                state = VersionStore(node.data_dir / "versions").get(version)
                assert version_hash(state) == version
                assert np.array_equal(state[frozen], genesis[frozen])
        store = UpdateStore(keeper.data_dir / "updates")
        forms = {
            any(isinstance(t, EncodedLowRank) for t in parse_update(store.get(i)).tensors)
            for i in store.ids()
        }
        assert forms == {True, False}  # low-rank and sparse updates were merged
        kinds = [{type(t) for t in parse_update(store.get(i)).tensors} for i in store.ids()]
        assert {EncodedLowRank, EncodedTensor} in kinds  # the LoRA one carries its biases' entries too
        assert keeper.status()["aggregation"]["placement"] == "gathered"  # per-group strategies


@pytest.mark.multiprocess
def test_the_bytes_target_setting_runs_between_real_nodes(tmp_path):
    """The setting that met the lm bytes target (bench/README.md): a run of sparse signs at 15% over one
    model-wide top-k, and contributors that rank by salience 0.5 and decay their residual x0.9 a round.
    Two `potluck join` contributors and a keeper commit two rounds; every node holds the same versions,
    and each update the keeper merged carries signs and at most 15% of the model's entries."""
    import time

    from potluck.localswarm import LocalSwarm, wait_for
    from potluck.runfiles import write_run
    from potluck.store.updates import UpdateStore
    from potluck.updates.codec import parse_update
    from potluck.updates.quantize import SIGN

    run = write_run(
        tmp_path / "run.toml", "lm", task_args=SMALL, round_seconds=16.0, start_time=time.time() + 20.0,
        density=0.15, values="sign", topk_scope="model",
    )  # fmt: skip
    with LocalSwarm.for_run(tmp_path / "swarm", run.manifest.run_id, run.path) as swarm:
        keeper = swarm.add_node(name="keeper").wait_ready()
        for i in range(2):
            swarm.add_contributor(f"c{i}", "--shard", f"{i}/2", "--local-steps", "10", "--seed", str(i),
                                  "--salience", "0.5", "--residual-decay", "0.9")  # fmt: skip
        for node in swarm.nodes:
            node.wait_ready()
        until = run.manifest.start_time + 5 * run.manifest.round_seconds - time.time()
        wait_for(lambda: all(n.status()["committed_round"] >= 1 for n in swarm.nodes), until, "two rounds")
        logs = [[(e["round"], e["version"], len(e["contributors"])) for e in _log(n)] for n in swarm.nodes]
        assert all(log[:2] == logs[0][:2] for log in logs), logs
        assert [c for _, _, c in logs[0][:2]] == [2, 2], logs
        total = sum(int(np.prod(s)) for s in get_task("lm", SMALL).shapes().values())
        store = UpdateStore(keeper.data_dir / "updates")
        for uid in store.ids():
            tensors = parse_update(store.get(uid)).tensors
            assert {t.value_encoding for t in tensors} == {SIGN}, uid
            assert 0 < sum(t.nnz for t in tensors) <= 0.15 * total


def _log(node):
    from potluck.demo import keeper_log

    return keeper_log(node)


# ---- a pre-trained genesis: the task's model, trained on the whole training split ---------------------


def test_pretrain_lowers_held_out_bpb_in_every_domain_and_is_deterministic(small):
    from potluck.tasks import pretrain, scores

    base = pretrain(small, steps=60, seed=1)
    assert version_hash(base) == version_hash(pretrain(get_task("lm", SMALL), steps=60, seed=1))
    assert version_hash(base) != version_hash(pretrain(small, steps=60, seed=2))
    # the whole training split (local_data(None): every domain, no held-out document), nothing else
    trained, _ = small.train(small.init_state(1), small.local_data(None), steps=60, seed=1)
    assert version_hash(trained) == version_hash(base)
    before, after = scores(small, small.init_state(1)), scores(small, base)
    assert set(after) == {"plays", "scripture", "poetry", "overall"}
    assert all(after[d] < before[d] - 1.0 for d in before), (before, after)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: s.pop("transformer.ln_f.bias"),
            "the genesis lacks tensor 'transformer.ln_f.bias' of task lm",
        ),
        (lambda s: s.update(extra=np.zeros(2, np.float32)), "the genesis has tensor 'extra', which task lm"),
        (
            lambda s: s.update({"transformer.wpe.weight": np.zeros((64, 32), np.float32)}),
            "genesis tensor 'transformer.wpe.weight' has shape (64, 32); task lm's model has (32, 32)",
        ),
        (
            lambda s: s.update({"transformer.wpe.weight": s["transformer.wpe.weight"].astype(np.float64)}),
            "genesis tensor 'transformer.wpe.weight' is float64; task lm's model's is float32",
        ),
        (lambda s: s["transformer.h.0.ln_1.bias"].__setitem__(0, np.nan), "holds a NaN or an infinity"),
    ],
)
def test_a_genesis_that_is_not_the_tasks_model_is_refused_naming_the_tensor(small, change, message):
    from potluck.tasks import check_genesis

    state = small.init_state(0)
    check_genesis(small, state)
    change(state)
    with pytest.raises(TaskError) as e:
        check_genesis(small, state)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_first_mismatch_by_name_is_the_one_named(small):
    from potluck.tasks import check_genesis

    big = get_task("lm", SMALL | {"d_model": 64})
    with pytest.raises(TaskError, match=r"'transformer.h.0.attn.c_attn.bias' has shape \(192,\)"):
        check_genesis(small, big.init_state(0))


# ---- low-rank (LoRA) training: adapters on chosen matrices, the model frozen ------------------------


def test_lowrank_training_is_deterministic_and_its_expansion_lowers_bpb(small):
    from potluck.updates.lowrank import expand

    state, data = small.init_state(0), small.local_data("plays")
    targets = ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight"]
    factors, samples = small.train_lowrank(state, data, steps=30, seed=1, rank=4, targets=targets)
    again, _ = small.train_lowrank(state, data, steps=30, seed=1, rank=4, targets=targets)
    assert sorted(factors) == targets and samples == 30 * 8 * 32
    a, b = factors[targets[0]]
    assert a.shape == (32, 4) and b.shape == (4, 96)
    assert all(np.array_equal(factors[n][i], again[n][i]) for n in targets for i in (0, 1))
    patched = dict(state) | {n: state[n] + expand(*factors[n]) for n in targets}
    assert small.evaluate(patched) < small.evaluate(state) - 0.1  # 8.018 -> 7.847 (a random base)


@pytest.mark.parametrize(
    ("targets", "rank", "message"),
    [(["transformer.h.9.mlp.c_fc.weight"], 2, "no 2-D tensor"), (["transformer.ln_f.bias"], 2, "no 2-D"),
     (["transformer.h.0.attn.c_proj.weight"], 33, "rank 33 is not in")],
)  # fmt: skip
def test_lowrank_refuses_a_missing_tensor_or_a_rank_too_high(small, targets, rank, message):
    with pytest.raises(TaskError, match=message):
        small.train_lowrank(small.init_state(0), small.local_data("plays"), steps=1, seed=0, rank=rank,
                            targets=targets)  # fmt: skip


def test_lowrank_extras_train_whole_and_a_seed_shares_a(small):
    from potluck.updates.lowrank import expand

    state, data = small.init_state(0), small.local_data("plays")
    targets = ["transformer.h.0.mlp.c_fc.weight"]
    extras = ["transformer.h.0.ln_1.weight", "transformer.ln_f.bias"]
    out, _ = small.train_lowrank(state, data, steps=10, seed=1, rank=2, targets=targets, extras=extras)
    assert sorted(out) == sorted(targets + extras)
    assert all(out[n].shape == state[n].shape and np.abs(out[n]).max() > 0 for n in extras)
    patched = {n: state[n] + out[n] for n in extras} | {
        targets[0]: state[targets[0]] + expand(*out[targets[0]])
    }
    patched = dict(state) | patched
    assert small.evaluate(patched) < small.evaluate(state)

    # A as drawn (0 steps): one a_seed gives two contributors (two seeds) the same A; without it, not
    def a_of(seed: int, a_seed: int | None) -> np.ndarray:
        out, _ = small.train_lowrank(state, data, steps=0, seed=seed, rank=2, targets=targets, a_seed=a_seed)
        return out[targets[0]][0]

    assert np.array_equal(a_of(1, 7), a_of(2, 7)) and not np.array_equal(a_of(1, None), a_of(2, None))
    with pytest.raises(TaskError, match="beside the adapters"):
        small.train_lowrank(state, data, steps=1, seed=0, rank=2, targets=targets, extras=targets)
