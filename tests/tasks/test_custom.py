"""A third-party TrainableTask through ``package.module:factory``, end to end: genesis, local data,
training, evaluation, and one merged round through the real update codec."""

import numpy as np

from potluck.identity import NodeIdentity
from potluck.rounds.fixedpoint import Layout, local_average
from potluck.tasks import TrainableTask, genesis, get_task, is_trainable
from potluck.updates.codec import Update, decode_update, encode_update
from potluck.updates.sparsify import ErrorFeedback

SPEC = "tests.tasks.custom_task:make"


def test_custom_task_end_to_end():
    task = get_task(SPEC, {"dim": 6})
    assert task.name == "blobs" and is_trainable(task) and isinstance(task, TrainableTask)
    state, base = genesis(task, 1)
    assert genesis(get_task(SPEC, {"dim": 6}), 1)[1] == base
    before = task.evaluate(state)

    carried = []
    for i in range(2):
        data = task.local_data(f"{i}/2", seed=0)
        steps = []
        new, samples = task.train(state, data, steps=20, seed=i, progress=steps.append)
        assert steps == list(range(1, 21)) and samples == 200
        assert task.evaluate(new) > 0.6  # trained on one label only: a biased but useful model
        delta = {k: new[k] - state[k] for k in state}
        identity = NodeIdentity.generate()
        tensors = ErrorFeedback(density=1.0, values="fp16").compress(delta)
        update = Update("run", 0, base, identity.public_key, 1, samples, tuple(tensors))
        blob = encode_update(update, identity, "fp16")
        carried.append((samples, decode_update(blob)))
    merged, contribution = local_average(state, Layout.from_state(state), carried, outer_lr=1.0)
    assert contribution.updates == 2 and contribution.weight == 400
    assert set(merged) == {"w", "b"} and all(np.isfinite(v).all() for v in merged.values())
    assert task.evaluate(merged) > max(0.9, before)


def test_custom_task_args_errors_are_task_errors():
    import pytest

    from potluck.tasks import TaskError

    with pytest.raises(TaskError):
        get_task(SPEC, {"dim": 0})
    with pytest.raises(TaskError):
        get_task(SPEC).local_data("0/0")
