"""potluck: volunteers improve one shared model with signed sparse patches over a P2P swarm."""

from typing import Any


def __getattr__(name: str) -> str:
    """``__version__`` and ``AGENT``, looked up on first use: importlib.metadata costs a command that
    does not need them (`potluck --help`, `status`) about a third of its start-up."""
    if name not in ("__version__", "AGENT"):
        raise AttributeError(f"module 'potluck' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("potluck")
    except PackageNotFoundError:  # running from a source tree that is not installed
        found = "0.0.0+source"
    globals().update(__version__=found, AGENT=f"potluck/{found}")
    return globals()[name]


def _install_deferred_imports() -> None:
    """Modules a dependency imports at start-up but uses rarely load on first use instead: hivemind
    imports ``scipy.optimize`` with its averager (for one ``linprog`` call in load balancing, reached
    only by a dense all-reduce), ~0.4 s and ~35 MB resident in every node process otherwise."""
    import importlib.abc
    import importlib.util
    import sys

    deferred = frozenset({"scipy.optimize"})

    class LazyFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            if name not in deferred:
                return None
            for finder in sys.meta_path:
                spec = None if finder is self else finder.find_spec(name, path, target)
                if spec is not None and spec.loader is not None:
                    spec.loader = importlib.util.LazyLoader(spec.loader)
                    return spec
            return None

    if not any(type(f).__name__ == "LazyFinder" for f in sys.meta_path):
        sys.meta_path.insert(0, LazyFinder())


_install_deferred_imports()
