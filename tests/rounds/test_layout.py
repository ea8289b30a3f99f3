"""potluck.rounds.layout: a model's flat coordinate system, the same on every peer with the same tensors."""

import numpy as np
import pytest

from potluck.rounds.layout import ROW, SPACING, Layout


def test_float_tensors_sorted_by_name_the_rest_passed_through():
    layout = Layout.from_state({"b": np.zeros((2, 3), np.float32), "a": np.zeros(4, np.float16),
                                "steps": np.zeros(1, np.int64)})  # fmt: skip
    assert [(s.name, s.offset, s.size) for s in layout.slots] == [("a", 0, 4), ("b", 4, 6)]
    assert layout.passthrough == ("steps",) and layout.slot("b").shape == (2, 3)
    assert layout.length == 10 and layout.rows == 1 and layout.packed_length == ROW
    with pytest.raises(KeyError):
        layout.slot("steps")


def test_rows_of_spacing_values_and_one_sentinel():
    assert ROW == SPACING + 1
    assert Layout.from_state({"w": np.zeros(SPACING, np.float32)}).rows == 1
    assert Layout.from_state({"w": np.zeros(SPACING + 1, np.float32)}).packed_length == 2 * ROW
    assert Layout.from_state({}).length == 0 and Layout.from_state({}).rows == 1


def test_digest_and_check_state_name_the_same_tensors():
    state = {"w": np.zeros((3, 4), np.float32), "n": np.zeros(2, np.int32)}
    layout = Layout.from_state(state)
    assert layout.digest == Layout.from_state({k: v.copy() for k, v in state.items()}).digest
    layout.check_state(state)
    for other in ({"w": np.zeros((4, 3), np.float32)}, {"w": np.zeros((3, 4), np.float64)}):
        assert Layout.from_state(other).digest != layout.digest
        with pytest.raises(ValueError):
            layout.check_state(other)
