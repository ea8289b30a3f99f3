"""Strategy resolution: built-ins, the "potluck.strategies" entry points, module:factory, errors."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import numpy as np
import pytest

from potluck.merge import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    StrategyError,
    available_strategies,
    get_strategy,
    registry,
)

ROOT = Path(__file__).resolve().parents[2]
KINDS = {
    "mean": "coordinate",
    "weighted_mean": "coordinate",
    "task_arithmetic": "coordinate",
    "ties": "coordinate",
    "dare": "coordinate",
    "trimmed_mean": "coordinate",
    "coordinate_median": "coordinate",
    "centered_clip": "vector",
    "multi_krum": "vector",
    "geometric_median": "vector",
    "norm_filter": "coordinate",
}


def test_builtins_resolve_with_their_kind():
    assert set(KINDS) <= set(available_strategies())
    for name, kind in KINDS.items():
        s = get_strategy(name, {})
        assert (s.name, s.kind) == (name, kind)


def test_pyproject_declares_the_builtins_as_entry_points():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = meta["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert declared == BUILTINS


def test_entry_point_of_a_third_party(monkeypatch):
    eps = [
        importlib.metadata.EntryPoint(
            "first_scaled", "tests.merge.custom_strategy:FirstScaled", ENTRY_POINT_GROUP
        ),
        importlib.metadata.EntryPoint("mean", "tests.merge.custom_strategy:FirstScaled", ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("broken_ep", "tests.merge.no_such_module:X", ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: eps)
    assert "first_scaled" in available_strategies()
    s = get_strategy("first_scaled", {"scale": "2"})
    out = s.merge([{"w": np.array([1.0, 0.0])}], [1], round_seed=0)
    assert out["w"].tolist() == [2.0, 0.0]
    assert type(get_strategy("mean")).__name__ == "Mean"  # a built-in name cannot be shadowed
    with pytest.raises(StrategyError, match="entry point"):
        get_strategy("broken_ep")


def test_module_factory_spec():
    s = get_strategy("tests.merge.custom_strategy:FirstScaled", {"scale": 3})
    assert s.kind == "coordinate"


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("no_such_strategy", "unknown strategy"),
        ("", "non-empty"),
        ("tests.merge.custom_strategy:missing", "has no"),
        ("tests.merge.nope:X", "cannot import"),
        ("tests.merge.custom_strategy:not_a_strategy", "not a Strategy"),
        ("tests.merge.custom_strategy:broken", "boom"),
    ],
)
def test_resolution_errors(name, match):
    with pytest.raises(StrategyError, match=match):
        get_strategy(name, {})


def test_unknown_and_mistyped_args():
    with pytest.raises(StrategyError, match="unknown argument"):
        get_strategy("trimmed_mean", {"betta": 0.1})
    with pytest.raises(StrategyError, match="str, int or float"):
        get_strategy("trimmed_mean", {"beta": [0.1]})
    with pytest.raises(StrategyError, match="mapping"):
        get_strategy("trimmed_mean", [("beta", 0.1)])
    assert get_strategy("trimmed_mean", {"beta": "0.1"}).args["beta"] == 0.1
    assert get_strategy("multi_krum", {"f": "2", "m": 4.0}).args == {"f": 2, "m": 4}
