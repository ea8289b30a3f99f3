"""The modules a node keeps, on disk: ``<data-dir>/modules/<name>.module``, one signed record per name.

:meth:`ModuleStore.admit` opens and checks a record (potluck.modules.record), applies the library's
rules (potluck.modules.library: a name belongs to the author of the first record kept under it, a
later version by that author replaces the kept one), then writes it crash-safely. A refused record
is never written, so the files are the library: :meth:`ModuleStore.library` rebuilds it. Beside a
record, ``<name>.claim`` keeps its author's signed name claim (potluck.modules.announce) once known.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from potluck.atomic import atomic_write_bytes
from potluck.modules.library import ModuleLibrary
from potluck.modules.record import Module, ModuleRefused, check_against, module_id, open_module

__all__ = ["ModuleStore"]

SUFFIX, CLAIM_SUFFIX = ".module", ".claim"


class ModuleStore:
    """A node's kept module records (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def library(self, on_damaged: Callable[[ModuleRefused], None] | None = None) -> ModuleLibrary:
        """The kept records as a library; a damaged file raises ModuleRefused naming it, or, given
        ``on_damaged``, is handed to it and left out."""
        lib = ModuleLibrary()
        for path in sorted(self.root.glob(f"*{SUFFIX}")):
            try:
                data = path.read_bytes()
                lib.admit(module_id(data), open_module(data))
            except ModuleRefused as e:
                if on_damaged is None:
                    raise ModuleRefused(e.reason, f"{path}: {e}") from None
                on_damaged(ModuleRefused(e.reason, f"{path}: {e}"))
            except FileNotFoundError:  # replaced or removed while we listed
                continue
        return lib

    def get(self, name: str) -> bytes:
        return (self.root / f"{name}{SUFFIX}").read_bytes()

    def admit(
        self,
        data: bytes,
        run_id: str,
        shapes: Mapping[str, tuple[int, ...]],
        gate_dim: int,
        max_rank: int,
        check: Callable[[Module], None] | None = None,
    ) -> tuple[str, Module]:
        """Check ``data`` (and ``check`` it, a further rule that raises ModuleRefused) and keep it:
        ``("kept" | "superseded", module)``; ModuleRefused says why not."""
        m = open_module(data)
        check_against(m, run_id, shapes, gate_dim, max_rank)
        if check is not None:
            check(m)
        status = self.library().admit(module_id(data), m)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / f"{m.name}{SUFFIX}", data)
        return status, m

    def claim(self, name: str) -> bytes | None:
        """The kept name claim of ``name`` (unchecked bytes), None if there is none."""
        try:
            return (self.root / f"{name}{CLAIM_SUFFIX}").read_bytes()
        except FileNotFoundError:
            return None

    def put_claim(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / f"{name}{CLAIM_SUFFIX}", data)
