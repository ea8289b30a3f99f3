import sys
import textwrap

import numpy as np
import pytest

from potluck.hashing import version_hash
from potluck.tasks import Task, TaskError, builtin_tasks, genesis, get_task, is_trainable
from potluck.tasks.toy import ToyTask


def test_toy_default_shapes_and_dtype():
    task = get_task("toy")
    assert isinstance(task, Task) and task.name == "toy" and is_trainable(task)
    state = task.init_state(0)
    assert {k: v.shape for k, v in state.items()} == {
        "l1.weight": (32, 16), "l1.bias": (32,), "l2.weight": (4, 32), "l2.bias": (4,),
    }  # fmt: skip
    assert all(v.dtype == np.float32 for v in state.values())
    assert np.abs(state["l1.weight"]).max() <= 0.25 and np.abs(state["l2.weight"]).max() <= 32**-0.5


def test_toy_is_deterministic_and_seeded():
    a, b = get_task("toy").init_state(7), get_task("toy").init_state(7)
    assert version_hash(a) == version_hash(b)
    assert version_hash(a) != version_hash(get_task("toy").init_state(8))
    # pinned: PCG64 + Generator.random is a stable stream; a change here changes every toy genesis
    assert (
        genesis(get_task("toy"), 0)[1]
        == version_hash(ToyTask().init_state(0))
        == ("5b4defa0e8ed82445f7d07176847ff6490cce1a0ca4ae568463d31e37f7e66ea")
    )


def test_toy_sizes_from_args():
    state = get_task("toy", {"inputs": 3, "hidden": 5, "outputs": 2}).init_state(1)
    assert state["l1.weight"].shape == (5, 3) and state["l2.weight"].shape == (2, 5)


@pytest.mark.parametrize(
    "args", [{"hidden": 0}, {"hidden": 2.5}, {"hidden": "8"}, {"depth": 3}, {"lr": 0}, {"batch": 1.5}]
)
def test_toy_bad_args(args):
    with pytest.raises(TaskError):
        get_task("toy", args)


def test_entry_point(tmp_path, monkeypatch):
    (tmp_path / "mytasks_for_test.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            class Lin:
                name = "lin"
                def __init__(self, n=3):
                    self.n = n
                def init_state(self, seed):
                    return {"w": np.full(self.n, seed, dtype=np.float32)}

            def make(n=3):
                return Lin(n)

            def broken():
                return object()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    task = get_task("mytasks_for_test:make", {"n": 5})
    assert task.init_state(2)["w"].tolist() == [2.0] * 5
    with pytest.raises(TaskError, match="not a Task"):
        get_task("mytasks_for_test:broken")
    with pytest.raises(TaskError, match="no callable"):
        get_task("mytasks_for_test:missing")
    with pytest.raises(TaskError, match="unexpected keyword"):
        get_task("mytasks_for_test:make", {"m": 1})
    sys.modules.pop("mytasks_for_test", None)


def test_unknown_specs():
    assert "toy" in builtin_tasks()
    for spec in ["nope", "no_such_module_xyz:make", "a b:c", ""]:
        with pytest.raises(TaskError):
            get_task(spec)


def test_toy_train_and_evaluate():
    task = get_task("toy")
    state = task.init_state(0)
    data = task.local_data()
    assert len(data) == 1024
    before = task.evaluate(state)
    steps_seen = []
    new, samples = task.train(state, data, steps=60, seed=3, progress=steps_seen.append)
    assert steps_seen == list(range(1, 61)) and samples == 1024  # min(60 * 32, 1024)
    assert task.evaluate(new) > 0.85 > before + 0.3
    assert version_hash(state) == version_hash(task.init_state(0))  # the input is not modified
    again, _ = task.train(state, data, steps=60, seed=3)
    assert version_hash(again) == version_hash(new)
    assert {k: (v.shape, v.dtype) for k, v in new.items()} == {
        k: (v.shape, v.dtype) for k, v in state.items()
    }


def test_toy_shards():
    task = get_task("toy")
    parts = [task.local_data(f"{i}/2") for i in range(2)]
    assert sum(len(p) for p in parts) == 1024
    for p in parts:  # 4 labels: two dominate each shard (chunks straddle label boundaries a little)
        counts = np.sort(np.bincount(p.y, minlength=4))
        assert counts[-2:].sum() >= 0.95 * len(p)
    with pytest.raises(TaskError):
        task.local_data("2/2")
