"""The modules a node keeps, on disk: ``<data-dir>/modules/<name>.module``, one signed record per name.

:meth:`ModuleStore.admit` opens and checks a record (potluck.modules.record), applies the library's
rules (potluck.modules.library: a name belongs to the author of the first record kept under it, a
later version by that author replaces the kept one), then writes it crash-safely. A refused record
is never written, so the files are the library: :meth:`ModuleStore.library` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from potluck.atomic import atomic_write_bytes
from potluck.modules.library import ModuleLibrary
from potluck.modules.record import Module, ModuleRefused, check_against, module_id, open_module

__all__ = ["ModuleStore"]

SUFFIX = ".module"


class ModuleStore:
    """A node's kept module records (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def library(self) -> ModuleLibrary:
        """The kept records as a library (a damaged file raises ModuleRefused naming it)."""
        lib = ModuleLibrary()
        for path in sorted(self.root.glob(f"*{SUFFIX}")):
            data = path.read_bytes()
            try:
                lib.admit(module_id(data), open_module(data))
            except ModuleRefused as e:
                raise ModuleRefused(e.reason, f"{path}: {e}") from None
        return lib

    def get(self, name: str) -> bytes:
        return (self.root / f"{name}{SUFFIX}").read_bytes()

    def admit(
        self, data: bytes, run_id: str, shapes: Mapping[str, tuple[int, ...]], gate_dim: int, max_rank: int
    ) -> tuple[str, Module]:
        """Check ``data`` and keep it: ``("kept" | "superseded", module)``; ModuleRefused says why not."""
        m = open_module(data)
        check_against(m, run_id, shapes, gate_dim, max_rank)
        status = self.library().admit(module_id(data), m)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / f"{m.name}{SUFFIX}", data)
        return status, m
