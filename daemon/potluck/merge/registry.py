"""Strategy names -> factories: built-ins, the "potluck.strategies" entry points, "module:factory"."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from potluck.merge.base import KINDS, ArgValue, Strategy, StrategyError

__all__ = ["BUILTINS", "ENTRY_POINT_GROUP", "available_strategies", "get_strategy", "resolve_factory"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "potluck.strategies"
# Also declared in pyproject.toml under [project.entry-points."potluck.strategies"]; this table is
# the fallback (an install whose metadata predates the entry points) and the authority: an entry
# point that reuses a built-in name for another object is ignored, so a name means the same code on
# every node that has this version of potluck.
BUILTINS: dict[str, str] = {
    "mean": "potluck.merge.linear:Mean",
    "weighted_mean": "potluck.merge.linear:WeightedMean",
    "task_arithmetic": "potluck.merge.linear:TaskArithmetic",
    "ties": "potluck.merge.linear:Ties",
    "dare": "potluck.merge.linear:Dare",
    "trimmed_mean": "potluck.merge.robust:TrimmedMean",
    "coordinate_median": "potluck.merge.robust:CoordinateMedian",
    "centered_clip": "potluck.merge.robust:CenteredClip",
    "multi_krum": "potluck.merge.robust:MultiKrum",
    "geometric_median": "potluck.merge.robust:GeometricMedian",
    "norm_filter": "potluck.merge.norm_filter:NormFilter",
    "history_clip": "potluck.merge.history:HistoryClip",
}
_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")

Factory = Callable[[Mapping[str, ArgValue]], Strategy]


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTINS:
            if ep.value.replace(" ", "") != BUILTINS[ep.name]:
                log.warning(
                    "ignoring entry point %s = %s: %r is a built-in strategy", ep.name, ep.value, ep.name
                )
            continue
        found.setdefault(ep.name, ep)
    return found


def available_strategies() -> list[str]:
    """Every resolvable name: the built-ins and the installed "potluck.strategies" entry points."""
    return sorted(set(BUILTINS) | set(_entry_points()))


def _load(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name.strip())
    except Exception as e:
        raise StrategyError(f"strategy {spec!r}: cannot import {module_name}: {type(e).__name__}: {e}") from e
    for part in attr.strip().split("."):
        if not hasattr(obj, part):
            raise StrategyError(f"strategy {spec!r}: {module_name} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


def resolve_factory(name: str) -> Factory:
    """The factory behind ``name``: a built-in, an entry point, or a ``package.module:factory`` spec."""
    if not isinstance(name, str) or not name:
        raise StrategyError(f"a strategy name is a non-empty string, got {name!r}")
    if name in BUILTINS:
        factory = _load(BUILTINS[name])
    else:
        eps = _entry_points()
        if name in eps:
            try:
                factory = eps[name].load()
            except Exception as e:
                raise StrategyError(f"strategy {name!r}: entry point {eps[name].value}: {e}") from e
        elif _SPEC.fullmatch(name):
            factory = _load(name)
        else:
            raise StrategyError(
                f"unknown strategy {name!r}: use one of {available_strategies()}, a "
                f"{ENTRY_POINT_GROUP!r} entry point, or 'package.module:factory'"
            )
    if not callable(factory):
        raise StrategyError(f"strategy {name!r} resolves to {factory!r}, which is not callable")
    return factory


def get_strategy(name: str, args: Mapping[str, ArgValue] | None = None) -> Strategy:
    """The strategy ``name`` configured with ``args`` (a manifest's ``strategy`` / ``strategy_args``).

    Raises :class:`StrategyError` for an unknown name, bad or unknown arguments, or a factory that
    fails or returns something that is not a Strategy.
    """
    if args is not None and not isinstance(args, Mapping):
        raise StrategyError(f"strategy {name!r}: args must be a mapping, got {type(args).__name__}")
    factory = resolve_factory(name)
    try:
        strategy = factory(dict(args or {}))
    except StrategyError:
        raise
    except Exception as e:
        raise StrategyError(f"strategy {name!r} with args {dict(args or {})}: {type(e).__name__}: {e}") from e
    if not isinstance(strategy, Strategy) or getattr(strategy, "kind", None) not in KINDS:
        raise StrategyError(
            f"strategy {name!r}: the factory returned {type(strategy).__name__}, not a Strategy "
            f"(name, kind in {KINDS}, args, merge)"
        )
    return strategy
