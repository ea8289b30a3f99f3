import numpy as np
import pytest

from potluck.hashing import version_hash
from potluck.identity import NodeIdentity
from potluck.merge import get_strategy, next_state
from potluck.rounds.fixedpoint import local_average, next_version, unpack
from potluck.rounds.placement import (
    DENSE_DENSITY,
    MAX_MERGE_MATRIX_BYTES,
    PlacementError,
    allowed,
    check_policy,
    choose,
    dense_prep,
    update_bytes,
)
from potluck.updates.codec import encode_update
from potluck.updates.sparsify import sparsify
from tests.rounds.test_fixedpoint import _round
from tests.updates.builders import build

MEAN = {"mean": True, "coordinate": True}
MEDIAN = {"mean": False, "coordinate": True}
KRUM = {"mean": False, "coordinate": False}
ISSUE = {"updates": 2, "participants": 2, "length": 768 * 65536, "density": 0.01, "values": "int8"}


def test_what_each_kind_of_strategy_may_run():
    assert allowed(**MEAN) == ("gathered", "sliced", "allreduce", "dense")
    assert allowed(**MEDIAN) == ("gathered", "sliced")
    assert allowed(**KRUM) == ("gathered",)
    assert allowed(mean=True, coordinate=False) == ("gathered", "allreduce", "dense")  # no slices
    for policy in ("auto", "gathered", "sliced", "allreduce", "dense"):
        check_policy(policy, **MEAN)
    with pytest.raises(PlacementError, match="runs gathered or sliced, not allreduce"):
        check_policy("allreduce", **MEDIAN, strategy="'coordinate_median'")
    with pytest.raises(PlacementError, match="runs gathered or sliced, not dense"):
        check_policy("dense", **MEDIAN, strategy="'coordinate_median'")
    with pytest.raises(PlacementError, match="whole-vector strategy: it runs gathered, not sliced"):
        check_policy("sliced", **KRUM)
    with pytest.raises(PlacementError, match="placement must be one of"):
        check_policy("butterfly", **MEAN)


def test_sparse_weighted_mean_of_the_issue_runs_gathered_not_the_dense_all_reduce():
    """50M parameters, two 1% updates, two keepers: ~1 MB each against ~400 MB of dense all-reduce."""
    choice = choose("auto", **MEAN, **ISSUE)
    assert choice.placement == "gathered"
    costs = choice.bytes_per_node
    assert costs["gathered"] < 2.5e6  # the two updates, ~1 MB each
    assert costs["allreduce"] - costs["gathered"] == 2 * (costs["sliced"] - costs["gathered"])
    assert costs["allreduce"] > 400e6 > 100 * costs["gathered"]
    assert costs["dense"] - costs["gathered"] == (costs["allreduce"] - costs["gathered"]) // 2  # int32
    assert choice.reason.startswith("auto: cheapest") and "allreduce 404.7 MB" in choice.reason
    assert choose("auto", **MEAN, **ISSUE) == choice  # a pure function of what everyone agrees on


@pytest.mark.parametrize("policy", ["gathered", "sliced", "allreduce", "dense"])
def test_a_fixed_placement_is_kept_and_says_so(policy):
    choice = choose(policy, **MEAN, **ISSUE)
    assert choice.placement == policy and choice.reason.startswith(f"the manifest fixes {policy}")


def test_dense_updates_and_whole_vector_strategies():
    dense = ISSUE | {"density": 1.0, "length": 1_000_000}
    choice = choose("auto", **MEAN, **dense)  # bytes alone say gathered: every node would quantize all
    assert choice.placement == "dense" and choice.reason.startswith("auto: dense updates (density 1)")
    assert choose("auto", **MEAN, **dense | {"density": DENSE_DENSITY}).placement == "dense"
    assert choose("auto", **MEAN, **dense | {"density": 0.3}).placement == "gathered"
    assert choose("auto", **MEAN, **dense | {"participants": 1}).placement == "gathered"  # alone
    assert choose("auto", **MEDIAN, **dense).placement == "gathered"  # only the weighted mean sums
    choice = choose("auto", **KRUM, **dense)
    assert choice.placement == "gathered" and set(choice.bytes_per_node) == {"gathered"}
    with pytest.raises(PlacementError):
        choose("allreduce", **KRUM, **dense)


def test_a_coordinate_strategy_slices_when_its_whole_matrix_would_not_fit():
    small = ISSUE | {"length": 1_000_000, "updates": 8, "participants": 4}
    assert choose("auto", **MEDIAN, **small).placement == "gathered"
    rows = MAX_MERGE_MATRIX_BYTES // (8 * small["length"]) + 1  # one update more than the matrix holds
    big = small | {"updates": rows}
    choice = choose("auto", **MEDIAN, **big)
    assert choice.placement == "sliced" and "merge matrix" in choice.reason
    # the weighted mean sums sparse updates into one vector: no matrix, gathered whatever their number
    assert choose("auto", **MEAN, **big).placement == "gathered"


@pytest.mark.parametrize(
    ("density", "values"), [(0.01, "int8"), (0.001, "fp16"), (0.3, "int8"), (0.01, "sign"), (0.002, "sign")]
)
def test_update_bytes_estimates_the_encoded_size(density, values):
    rng = np.random.default_rng(0)
    n = 200_000
    tensor = sparsify("w", rng.standard_normal(n).astype(np.float32), density)
    author = NodeIdentity.generate()
    data = encode_update(build(author, tensors=(tensor,)), author, values=values)
    estimate = update_bytes(n, density, values)
    assert 0.8 < estimate / len(data) < 1.2, (estimate, len(data))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_the_weighted_mean_gathered_is_bit_identical_to_the_all_reduce(n):
    """What a gathered keeper computes (all updates, one node) and what WeightedMean.merge gives are the
    bytes the all-reduce (simulated butterfly, updates spread over n carriers) gives."""
    base, layout, carried, _, meta, results = _round(n, seed=10 + n)
    everything = [wu for c in carried for wu in c]
    averaged = next(iter(results.values()))
    summed = unpack(layout, averaged, n, meta["sentinel_sum"], meta["checksum"])
    allreduce = version_hash(next_version(base, layout, summed, meta["weight"], 0.7))
    gathered, _ = local_average(base, layout, everything, 0.7)
    deltas = [u for _, u in everything]
    merged = get_strategy("weighted_mean").merge(deltas, [w for w, _ in everything], round_seed=0)
    assert version_hash(gathered) == allreduce == version_hash(next_state(base, merged, 0.7))


def test_only_runs_that_may_prepare_a_dense_vector_make_attempts_grow_with_the_model():
    assert not dense_prep("auto", **MEAN)  # auto never picks the all-reduce or slices for the mean
    assert not dense_prep("gathered", **MEDIAN) and not dense_prep("auto", **KRUM)
    assert dense_prep("allreduce", **MEAN) and dense_prep("sliced", **MEAN) and dense_prep("auto", **MEDIAN)
    assert dense_prep("dense", **MEAN) and dense_prep("auto", **MEAN, density=1.0)  # a dense round
    assert not dense_prep("auto", **MEAN, density=0.3)
