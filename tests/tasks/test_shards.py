import numpy as np
import pytest

from potluck.tasks import TaskError, get_task
from potluck.tasks.data import ShardSpec, parse_shard, shard_indices
from potluck.tasks.digits import digits_split


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return digits_split()[0].y


@pytest.mark.parametrize("n", [1, 2, 5, 8, 10])
def test_label_shards_disjoint_and_complete(labels, n):
    parts = [shard_indices(labels, f"{i}/{n}", seed=0) for i in range(n)]
    everything = np.concatenate(parts)
    assert everything.size == labels.size and np.array_equal(np.sort(everything), np.arange(labels.size))
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 2  # 2N near-equal chunks, two per shard


@pytest.mark.parametrize("n", [5, 8])
def test_label_shards_are_non_iid(labels, n):
    owners = []
    for i in range(n):
        ys = labels[shard_indices(labels, f"{i}/{n}", seed=0)]
        counts = np.bincount(ys, minlength=10)
        present = np.flatnonzero(counts)
        assert 2 <= present.size <= 4  # ~2 labels: two label-sorted chunks, each may straddle a boundary
        owners.append(counts > 0)
    assert np.sum(owners, axis=0).max() <= 3  # and each label lives in at most 3 of the shards
    # two far-apart chunks: for N=5 (10 chunks of ~one label each) shard i holds labels ~i and ~i+5
    ys = labels[shard_indices(labels, "0/5", seed=0)]
    assert {0, 5} <= set(ys.tolist())


def test_task_shards_do_not_depend_on_the_contributor_seed():
    task = get_task("digits")
    a, b = task.local_data("1/4", seed=0), task.local_data("1/4", seed=5)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    parts = [task.local_data(f"{i}/4", seed=i) for i in range(4)]  # each contributor its own seed
    assert sum(len(p) for p in parts) == len(task.local_data())
    rows = {r.tobytes() for p in parts for r in np.column_stack([p.x, p.y])}
    assert len(rows) == len({r.tobytes() for d in [task.local_data()] for r in np.column_stack([d.x, d.y])})


def test_shards_depend_on_seed_only(labels):
    a = shard_indices(labels, "1/4", seed=3)
    assert np.array_equal(a, shard_indices(labels, "1/4", seed=3))
    assert not np.array_equal(a, shard_indices(labels, "1/4", seed=4))  # straddled labels split differently
    assert np.array_equal(shard_indices(labels, None), np.arange(labels.size))


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_shards_disjoint_and_complete(labels, alpha):
    parts = [shard_indices(labels, f"dirichlet:{alpha}:{i}/6", seed=5) for i in range(6)]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(labels.size))
    assert min(p.size for p in parts) >= 10
    again = shard_indices(labels, f"dirichlet:{alpha}:2/6", seed=5)
    assert np.array_equal(again, parts[2])


def test_dirichlet_alpha_controls_skew(labels):
    def skew(alpha: float) -> float:
        """Mean total-variation distance between a shard's label mix and the global one."""
        glob = np.bincount(labels, minlength=10) / labels.size
        dists = []
        for i in range(8):
            ys = labels[shard_indices(labels, f"dirichlet:{alpha}:{i}/8", seed=0)]
            dists.append(0.5 * np.abs(np.bincount(ys, minlength=10) / ys.size - glob).sum())
        return float(np.mean(dists))

    assert skew(0.1) > 0.5 > 0.1 > skew(1000.0)


def test_parse():
    assert parse_shard(None) is None
    assert parse_shard("2/8") == ShardSpec(2, 8)
    assert parse_shard("dirichlet:0.5:0/3") == ShardSpec(0, 3, 0.5)


@pytest.mark.parametrize(
    "spec",
    ["", "8/8", "4/2", "-1/4", "1/0", "a/b", "1/4 ", " 1/4", "1-4", "1/4/2", "dirichlet:0:1/4",
     "dirichlet:-1:1/4", "dirichlet:x:1/4", "dirichlet:nan:0/4", "dirichlet:inf:0/4",
     "dirichlet::0/4", "dirichlet:0.5:4/4", "dirichlet:0.5", "iid:0/4", 3, b"0/2"],
)  # fmt: skip
def test_bad_specs_raise_task_error(spec):
    with pytest.raises(TaskError):
        parse_shard(spec)
    with pytest.raises(TaskError):
        get_task("digits").local_data(spec)


def test_too_many_shards():
    with pytest.raises(TaskError, match="need"):
        shard_indices(np.zeros(5, np.int64), "0/3")
    with pytest.raises(TaskError, match="ALPHA"):
        shard_indices(np.arange(40) % 2, "dirichlet:0.0001:0/4")
