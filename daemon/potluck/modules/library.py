"""Which module records a node keeps (pure): one per name, the name owned by its first author.

A name belongs to the author of the first record under it that this node kept (arrival order at
this node; records are checked with :func:`potluck.modules.record.open_module` first). A record by
another author under a kept name is refused (``name_taken``: "module name already taken by another
author"); one by the owner with a higher ``version`` supersedes the kept one; an equal or lower
version is refused (``stale_version``), the same bytes again are ``duplicate``.
"""

from __future__ import annotations

from dataclasses import dataclass

from potluck.modules.record import Module, ModuleRefused

__all__ = ["Kept", "ModuleLibrary"]


@dataclass(frozen=True)
class Kept:
    module_id: str
    module: Module


class ModuleLibrary:
    """The kept module per name; :meth:`admit` applies the rules of the module doc."""

    def __init__(self) -> None:
        self._kept: dict[str, Kept] = {}

    def admit(self, module_id: str, m: Module) -> str:
        """``"kept"`` (a new name) or ``"superseded"`` (a newer version); ModuleRefused otherwise."""
        old = self._kept.get(m.name)
        if old is not None:
            if old.module_id == module_id:
                raise ModuleRefused("duplicate", f"module {m.name} v{m.version} is already kept")
            if old.module.author != m.author:
                raise ModuleRefused("name_taken", f"module name already taken by another author: {m.name}")
            if m.version <= old.module.version:
                raise ModuleRefused(
                    "stale_version",
                    f"module {m.name} v{m.version} is not above the kept v{old.module.version}",
                )
        self._kept[m.name] = Kept(module_id, m)
        return "kept" if old is None else "superseded"

    def next_version(self, name: str, author: bytes) -> int:
        """The version ``author``'s next record under ``name`` takes here: one above its kept one;
        ModuleRefused (``name_taken``) if ``name`` is kept from another author."""
        old = self._kept.get(name)
        if old is not None and old.module.author != author:
            raise ModuleRefused("name_taken", f"module name already taken by another author: {name}")
        return old.module.version + 1 if old is not None else 1

    def get(self, name: str) -> Kept | None:
        return self._kept.get(name)

    def names(self) -> list[str]:
        return sorted(self._kept)

    def select(self, names: list[str] | None = None) -> list[Module]:
        """The kept modules named (all, in name order, for None); KeyError names the unknown one."""
        chosen = self.names() if names is None else names
        missing = [n for n in chosen if n not in self._kept]
        if missing:
            raise KeyError(f"no module named {missing[0]!r} (kept: {', '.join(self.names()) or 'none'})")
        return [self._kept[n].module for n in chosen]
