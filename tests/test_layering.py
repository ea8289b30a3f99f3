"""Layers only point down: the allowed order of potluck's packages, written down once, and checked.

A "unit" is a package or a top-level module of ``daemon/potluck`` (``rounds``, ``node``, ...). A module
may import its own unit and any unit listed before its own in ``LAYERS``; an import of a unit listed
after it (at top level, inside a function, anywhere) fails, and so does one of a unit ``LAYERS`` does
not name (place a new package in the order first). As the order is total, two units that import each
other always fail; the report names such pairs. The pure core (``PURE``) also imports no network,
event loop, process or database machinery. Neither the package nor ``bench/`` imports ``tests``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "daemon" / "potluck"

# Lowest first. The bottom is what everything may use: the root package (__version__, AGENT), generated
# protobuf code, errors, bounded msgpack, keys, signed records, atomic writes, hashes, the data folder.
# Then the pure core (updates < merge < manifest < rounds), then the shell that composes it.
LAYERS: tuple[str, ...] = (
    "lean",  # imports deferred until first use (torch, scipy.optimize): installed by the root package
    "potluck",  # the root package: __version__, AGENT
    "v1",  # generated protobuf code
    "errors",
    "wire",
    "identity",
    "signed",
    "atomic",
    "hashing",
    "datadir",
    "groups",  # parameter groups: manifest rules by tensor name (pure)
    "updates",
    "modules",  # the module library: signed module records, name ownership, routing math (pure)
    "merge",
    "manifest",
    "rounds",
    "store",
    "tasks",
    "runfiles",  # write_run: manifest + genesis weights on disk
    "swarm",
    "exchange",
    "defence",
    "vcs",  # show, diff, blame, verify: reads a data dir
    "engine",
    "rpc",
    "observe",  # /metrics, the dashboard, JSON logs: read-only views of the control API's replies
    "joining",
    "node",
    "lifecycle",
    "contribute",
    "contribute_module",  # join --module: train, sign and keep a module through the node
    "localswarm",
    "demo",
    "cli",
    "__main__",
)

# Functions of bytes and tensors: no I/O machinery (the async shell composes them).
PURE = ("wire", "signed", "hashing", "groups", "updates", "modules", "merge", "rounds")
IMPURE_MODULES = frozenset(
    {"asyncio", "hivemind", "grpc", "socket", "subprocess", "sqlite3", "multiprocessing", "threading"}
    | {"signal", "ctypes", "fcntl"}
)


def unit_of(module: str) -> str:
    """``potluck.rounds.entries`` -> ``rounds``; ``potluck`` -> ``potluck``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, absolute dotted name) of every import in ``source``, wherever it stands."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                here = module.split(".") if is_package else module.split(".")[:-1]
                here = here[: len(here) - node.level + 1]
                base = ".".join(here + ([base] if base else []))
            for alias in node.names:
                # `from potluck import node` names a module; `from potluck import AGENT` an attribute
                yield node.lineno, f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base


def _is_module(dotted: str) -> bool:
    parts = dotted.split(".")
    if parts[0] != "potluck":
        return False
    path = PACKAGE.joinpath(*parts[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Each import in ``source`` (the text of ``module``) that breaks the layer order or purity."""
    own = unit_of(module)
    found = []
    if own not in LAYERS:
        return [f"{module}: unit {own!r} is not in LAYERS (place it in the order)"]
    for line, target in dict.fromkeys(imported_modules(source, module, is_package)):
        top = target.split(".")[0]
        if own in PURE and top in IMPURE_MODULES:
            found.append(f"{module}:{line} imports {target} (the pure {own!r} does no I/O)")
        if top != "potluck":
            continue
        other = unit_of(target)
        if other == own:
            continue
        if other not in LAYERS:
            found.append(f"{module}:{line} imports {target}: unit {other!r} is not in LAYERS")
        elif LAYERS.index(other) > LAYERS.index(own):
            found.append(f"{module}:{line} imports {target} ({own!r} is below {other!r})")
    return found


def unit_edges() -> dict[tuple[str, str], list[str]]:
    """(importing unit, imported unit) -> the modules that make the edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        for _, target in imported_modules(path.read_text(), module, path.name == "__init__.py"):
            if target.split(".")[0] == "potluck" and unit_of(target) != unit_of(module):
                edges.setdefault((unit_of(module), unit_of(target)), []).append(module)
    return edges


def test_layers_name_every_unit_once() -> None:
    assert len(set(LAYERS)) == len(LAYERS)
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units <= set(LAYERS), f"place these in LAYERS: {sorted(units - set(LAYERS))}"


def test_imports_only_point_down() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += violations(module_name(path), path.read_text(), path.name == "__init__.py")
    assert not found, "imports that point up the layers:\n" + "\n".join(found)


def test_no_two_packages_import_each_other() -> None:
    edges = unit_edges()
    mutual = sorted(
        f"{a} <-> {b} ({', '.join(sorted(set(edges[a, b])))} / {', '.join(sorted(set(edges[b, a])))})"
        for a, b in edges
        if a < b and (b, a) in edges
    )
    assert not mutual, "packages that import each other:\n" + "\n".join(mutual)


def test_bench_and_package_import_nothing_from_tests() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "bench").rglob("*.py")])
        for line, target in imported_modules(path.read_text(), path.stem)
        if target.split(".")[0] == "tests"
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        # upward imports that were on main before the reshape
        ("potluck.rounds.engine", "from potluck.defence.service import DefenceService", "below 'defence'"),
        ("potluck.merge.linear", "from potluck.rounds.fixedpoint import QUANTUM", "below 'rounds'"),
        ("potluck.store.history", "from potluck.node import Node", "below 'node'"),
        ("potluck.manifest", "def f():\n    from potluck.store import atomic\n", "below 'store'"),
        ("potluck.updates.files", "import potluck.store.versions", "below 'store'"),
        ("potluck.rounds.entries", "from .. import node", "below 'node'"),
        ("potluck.rounds.schedule", "import asyncio", "does no I/O"),
        ("potluck.merge.base", "from hivemind.averaging import DecentralizedAverager", "does no I/O"),
        ("potluck.gadgets", "import os", "not in LAYERS"),
    ],
)
def test_checker_catches(module: str, source: str, expected: str) -> None:
    found = violations(module, source)
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("potluck.node", "from potluck import AGENT\nfrom potluck.rounds import schedule"),
        ("potluck.store.history", "from potluck.rounds.commit import Commit"),
        ("potluck.rounds.commit", "from .entries import Entry\nimport hashlib"),
        ("potluck.cli", "import asyncio\nfrom potluck.node import Node"),
    ],
)
def test_checker_allows(module: str, source: str) -> None:
    assert violations(module, source) == []


if __name__ == "__main__":  # print the package graph: python tests/test_layering.py
    for (a, b), modules in sorted(unit_edges().items(), key=lambda e: (LAYERS.index(e[0][0]), e[0][1])):
        print(f"{a:>10} -> {b:<10} {', '.join(sorted(set(modules)))}")
