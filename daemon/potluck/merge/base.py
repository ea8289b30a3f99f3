"""The Strategy protocol, its errors, argument parsing and the shared base class."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from potluck.merge.batch import Batch, Delta, InputError, make_batch

__all__ = ["KINDS", "ArgValue", "Args", "BaseStrategy", "Strategy", "StrategyError", "supports_columns"]

ArgValue = str | int | float
KINDS = ("coordinate", "vector")


class StrategyError(ValueError):
    """An unknown strategy, bad strategy arguments, or input a strategy cannot merge."""


@runtime_checkable
class Strategy(Protocol):
    """A merge rule: a pure, deterministic function of the round's deltas, weights and seed.

    A ``coordinate`` strategy may also have the optional method (not part of the runtime check)::

        def merge_columns(self, deltas, weights, *, round_seed: int,
                          shapes: Mapping[str, tuple[int, ...]], columns: np.ndarray) -> np.ndarray

    the merge restricted to a window of coordinates: a float64 vector of ``len(columns)``, bitwise
    equal to ``merge(deltas, weights, round_seed=round_seed)`` flattened in the layout of ``shapes``
    (tensors in sorted-name order, each flat in C order; a tensor the merge does not name is 0) at
    the sorted, unique flat indices ``columns``. A reducer of one slice of the all-reduce runs it on
    its slice. Callers check :func:`supports_columns`: a coordinate strategy without this method (or
    a :class:`BaseStrategy` subclass that does not declare ``windowed = True``) is treated like a
    vector strategy, i.e. merged where the round's updates are gathered.
    """

    name: str
    kind: Literal["coordinate", "vector"]
    args: Mapping[str, Any]  # the resolved arguments, defaults filled in

    def merge(
        self, deltas: Sequence[Delta], weights: Sequence[float], *, round_seed: int
    ) -> dict[str, np.ndarray]:
        """The merged delta, ``{tensor name: float64 array}`` over every tensor the deltas name."""
        ...


class Args:
    """Typed access to a strategy's ``args`` mapping; values may be strings (from a manifest or CLI)."""

    def __init__(self, strategy: str, args: Mapping[str, ArgValue] | None) -> None:
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise StrategyError(f"{strategy}: args must be a mapping, got {type(args).__name__}")
        for k, v in args.items():
            if not isinstance(k, str):
                raise StrategyError(f"{strategy}: argument names are strings, got {k!r}")
            if not isinstance(v, str | int | float):  # bool is an int: accepted for boolean args
                raise StrategyError(f"{strategy}: argument {k!r} must be a str, int or float, got {v!r}")
        self.strategy = strategy
        self._args = dict(args)
        self._used: set[str] = set()
        self.resolved: dict[str, Any] = {}

    def _raw(self, key: str) -> ArgValue | None:
        self._used.add(key)
        return self._args.get(key)

    def _bad(self, key: str, value: object, what: str) -> StrategyError:
        return StrategyError(f"{self.strategy}: argument {key!r} must be {what}, got {value!r}")

    def number(
        self,
        key: str,
        default: float | None,
        *,
        low: float = -math.inf,
        high: float = math.inf,
        low_open: bool = False,
        high_open: bool = False,
    ) -> float | None:
        raw = self._raw(key)
        if raw is None:
            self.resolved[key] = default
            return default
        if isinstance(raw, bool):
            raise self._bad(key, raw, "a number")
        try:
            value = float(raw)
        except ValueError:
            raise self._bad(key, raw, "a number") from None
        lo_ok = value > low if low_open else value >= low
        hi_ok = value < high if high_open else value <= high
        if not math.isfinite(value) or not lo_ok or not hi_ok:
            interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            raise self._bad(key, raw, f"a finite number in {interval}")
        self.resolved[key] = value
        return value

    def integer(self, key: str, default: int | None, *, low: int = 0, high: int = 1 << 31) -> int | None:
        raw = self._raw(key)
        if raw is None:
            self.resolved[key] = default
            return default
        if isinstance(raw, bool):
            raise self._bad(key, raw, "an integer")
        if isinstance(raw, float):
            if not raw.is_integer():
                raise self._bad(key, raw, "an integer")
            raw = int(raw)
        try:
            value = int(raw)
        except ValueError:
            raise self._bad(key, raw, "an integer") from None
        if not low <= value <= high:
            raise self._bad(key, raw, f"an integer in [{low}, {high}]")
        self.resolved[key] = value
        return value

    def boolean(self, key: str, default: bool) -> bool:
        raw = self._raw(key)
        if raw is None:
            value = default
        elif isinstance(raw, int) and raw in (0, 1):
            value = bool(raw)
        elif isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            value = raw.lower() in ("true", "1", "yes", "on")
        else:
            raise self._bad(key, raw, "a boolean (true/false, 1/0)")
        self.resolved[key] = value
        return value

    def choice(self, key: str, default: str, options: Sequence[str]) -> str:
        raw = self._raw(key)
        value = default if raw is None else raw
        if value not in options:
            raise self._bad(key, raw, f"one of {list(options)}")
        self.resolved[key] = value
        return value

    def finish(self) -> dict[str, Any]:
        unknown = sorted(set(self._args) - self._used)
        if unknown:
            raise StrategyError(
                f"{self.strategy}: unknown argument(s) {unknown}; it takes {sorted(self._used) or 'none'}"
            )
        return dict(self.resolved)


def _seed(round_seed: int) -> int:
    if isinstance(round_seed, bool) or not isinstance(round_seed, int | np.integer):
        raise StrategyError(f"round_seed is an integer, got {round_seed!r}")
    return int(round_seed) % (1 << 64)


def supports_columns(strategy: Strategy) -> bool:
    """Whether ``strategy`` can merge a window of coordinates (``merge_columns``, see :class:`Strategy`):
    a ``coordinate`` strategy with a ``merge_columns`` method; for a :class:`BaseStrategy`, one that
    declares ``windowed = True``. Any other strategy must be merged where the whole updates are."""
    if getattr(strategy, "kind", None) != "coordinate":
        return False
    if not callable(getattr(strategy, "merge_columns", None)):
        return False
    if isinstance(strategy, BaseStrategy):
        return bool(strategy.windowed)
    return True


class BaseStrategy:
    """Built-in strategies: parse args in ``__init__`` (via :meth:`configure`), merge a :class:`Batch`.

    A subclass implements :meth:`merge_batch`. One that sets ``windowed = True`` (only meaningful for
    ``kind = "coordinate"``) promises that its ``merge_batch`` also accepts a window batch
    (``batch.columns`` set, see :func:`~potluck.merge.batch.make_batch`) and returns, for each of its
    columns, the same bits as on the whole batch; :meth:`merge_columns` then works. A per-update
    step over the whole update goes through ``batch.nonzeros(i)`` (the row over the whole layout) and
    ``batch.segments()`` (which tensor each column belongs to).
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["coordinate", "vector"]]
    windowed: ClassVar[bool] = False

    def __init__(self, args: Mapping[str, ArgValue] | None = None) -> None:
        a = Args(self.name, args)
        self.configure(a)
        self.args = a.finish()

    def configure(self, a: Args) -> None:
        """Read this strategy's arguments from ``a`` into attributes (none by default)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.args})"

    def merge(
        self, deltas: Sequence[Delta], weights: Sequence[float], *, round_seed: int
    ) -> dict[str, np.ndarray]:
        seed = _seed(round_seed)
        batch = self.batch_of(deltas, weights)
        if batch.n == 0:
            return batch.split(np.zeros(batch.length, dtype=np.float64))
        flat = self.merge_batch(batch, seed)
        return batch.split(flat)

    def batch_of(
        self,
        deltas: Sequence[Delta],
        weights: Sequence[float],
        shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> Batch:
        """The canonical :class:`Batch` of the whole deltas (in the layout of ``shapes`` if given);
        malformed input is a :class:`StrategyError`."""
        try:
            return make_batch(deltas, weights, shapes=shapes)
        except InputError as e:
            raise StrategyError(f"{self.name}: {e}") from None

    def merge_columns(
        self,
        deltas: Sequence[Delta],
        weights: Sequence[float],
        *,
        round_seed: int,
        shapes: Mapping[str, tuple[int, ...]],
        columns: np.ndarray,
    ) -> np.ndarray:
        """The merge at the flat indices ``columns`` (sorted, unique) of the layout of ``shapes``: float64
        of ``len(columns)``, bitwise equal to :meth:`merge` flattened in that layout (0 for a tensor it
        does not name) at those indices. Every delta's tensors must be tensors of ``shapes``.

        Raises :class:`StrategyError` for a strategy that is not ``windowed`` (vector strategies: their
        result at one coordinate depends on all coordinates) and for malformed input.
        """
        if self.kind != "coordinate" or not self.windowed:
            raise StrategyError(
                f"{self.name}: a {self.kind} strategy that cannot merge a window of coordinates; "
                "merge the whole updates"
            )
        seed = _seed(round_seed)
        try:
            batch = make_batch(deltas, weights, shapes=shapes, columns=columns)
        except InputError as e:
            raise StrategyError(f"{self.name}: {e}") from None
        if batch.n == 0:
            return np.zeros(batch.length, dtype=np.float64)
        out = np.asarray(self.merge_batch(batch, seed), dtype=np.float64)
        if out.shape != (batch.length,):
            raise StrategyError(f"{self.name}: merge_batch returned shape {out.shape}, not ({batch.length},)")
        return out

    def merge_batch(self, batch: Batch, seed: int) -> np.ndarray:
        """The merged delta as a flat float64 vector of length ``batch.length`` (the matrix's columns)."""
        raise NotImplementedError

    def attribute(
        self, deltas: Sequence[Delta], weights: Sequence[float], *, round_seed: int
    ) -> list[dict[str, np.ndarray]] | None:
        """Each delta's term of :meth:`merge` (in the order given; ``{}`` for a delta of weight 0):
        ``{tensor: float64 array}`` over the merge's tensors, the terms adding up to the merge (up to
        float rounding). None when this strategy has no exact rule (:meth:`attribute_batch`):
        potluck.merge.attribution then falls back to the projection rule."""
        seed = _seed(round_seed)
        try:
            batch = make_batch(deltas, weights)
        except InputError as e:
            raise StrategyError(f"{self.name}: {e}") from None
        terms = self.attribute_batch(batch, seed) if batch.n else np.zeros((0, batch.length))
        if terms is None:
            return None
        out: list[dict[str, np.ndarray]] = [{} for _ in deltas]
        for row, given in enumerate(batch.order):
            out[given] = batch.split(terms[row])
        return out

    def attribute_batch(self, batch: Batch, seed: int) -> np.ndarray | None:
        """Row i: delta i's term of :meth:`merge_batch` (float64, ``(n, length)``), the rows adding up to
        the merge; None (the default) when the rule has no exact decomposition."""
        return None
