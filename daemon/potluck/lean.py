"""Imports deferred until first use, so that a node that never touches torch never loads it.

`import torch` alone makes ~143 MB of anonymous memory in a process (measured here), and every node
process imported it through hivemind: the package's ``__init__`` imports its averager, MoE and
optimizer, ``hivemind.utils``' imports ``tensor_descr``, and ``hivemind.utils.mpfuture`` (behind every DHT
call) keeps each future's state in one byte of a shared torch tensor. A keeper needs none of it (a
contributor trains, and imports torch itself). Installed by ``potluck/__init__.py`` before anything
imports hivemind:

- ``scipy.optimize`` loads on first attribute use (``importlib.util.LazyLoader``): hivemind's averager
  imports it for one ``linprog`` call that only a dense all-reduce reaches (~0.4 s and ~35 MB).
- ``hivemind`` and ``hivemind.utils``: the package's own ``from hivemind.X import name`` statements run
  when ``name`` is first asked for (``hivemind.DHT``, ``from hivemind.utils import MPFuture``), the rest
  of its ``__init__`` runs as usual; submodules import as always.
- ``hivemind.utils.mpfuture`` runs with a stand-in for the little of torch it uses
  (:func:`_torch_for_mpfuture`): the same one byte of shared memory per future (:class:`SharedByte` of a
  memfd-backed :class:`SharedBuffer`, passed to other processes by file descriptor as torch's
  ``file_descriptor`` strategy passes its own).
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import importlib.abc
import importlib.util
import mmap
import multiprocessing.connection  # noqa: F401  (mpfuture names mp.connection; torch used to import it)
import os
import sys
import types
import weakref
from multiprocessing import reduction
from typing import Any

DEFERRED = frozenset({"scipy.optimize"})
ON_DEMAND_EXPORTS = frozenset({"hivemind", "hivemind.utils"})
TORCHLESS = "hivemind.utils.mpfuture"


class SharedByte:
    """One byte of a :class:`SharedBuffer`: mpfuture reads it with ``.item()``, writes it with ``[...] =``."""

    def __init__(self, buffer: SharedBuffer, index: int) -> None:
        self.buffer, self.index = buffer, index

    def item(self) -> int:
        return self.buffer.map[self.index]

    def __setitem__(self, key: Any, value: int) -> None:
        if key is not Ellipsis:
            raise TypeError("a SharedByte is a scalar: assign with [...]")
        self.buffer.map[self.index] = value

    def __reduce__(self) -> tuple[Any, ...]:
        return rebuild_shared_byte, (reduction.DupFd(self.buffer.fd), self.buffer.size, self.index)


class SharedBuffer:
    """Bytes in a memfd mapped shared: forked children share them, other processes get the fd pickled."""

    def __init__(self, size: int, fd: int | None = None) -> None:
        self.size = size
        self.fd = os.memfd_create("potluck-mpfuture", os.MFD_CLOEXEC) if fd is None else fd
        if fd is None:
            os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        weakref.finalize(self, os.close, self.fd)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> SharedByte:
        return SharedByte(self, index)

    def share_memory_(self) -> SharedBuffer:
        return self


_received: weakref.WeakValueDictionary[tuple[int, int], SharedBuffer] = weakref.WeakValueDictionary()


def rebuild_shared_byte(dup: Any, size: int, index: int) -> SharedByte:
    """The receiving side of :meth:`SharedByte.__reduce__`; one mapping per buffer and process. Raises
    RuntimeError as torch does when the sender is gone (mpfuture then falls back to a private byte)."""
    try:
        fd = dup.detach()
    except (OSError, EOFError) as e:
        raise RuntimeError(f"shared byte no longer reachable: {e}") from e
    st = os.fstat(fd)
    buffer = _received.get((st.st_dev, st.st_ino))
    if buffer is None:
        buffer = _received[(st.st_dev, st.st_ino)] = SharedBuffer(size, fd)
    else:
        os.close(fd)
    return SharedByte(buffer, index)


class PrivateByte:
    """``torch.tensor([code], dtype=torch.uint8)``: mpfuture's unshared fallback."""

    def __init__(self, value: int) -> None:
        self.value = value

    def item(self) -> int:
        return self.value

    def __setitem__(self, key: Any, value: int) -> None:
        self.value = value


def _torch_for_mpfuture() -> types.ModuleType:
    """The part of torch's API that ``hivemind.utils.mpfuture`` uses."""
    shim = types.ModuleType("torch")
    shim.uint8 = "uint8"  # type: ignore[attr-defined]
    shim.Tensor = SharedByte  # type: ignore[attr-defined]
    shim.empty = lambda shape, dtype=None: SharedBuffer(shape[0])  # type: ignore[attr-defined]
    shim.tensor = lambda values, dtype=None: PrivateByte(values[0])  # type: ignore[attr-defined]
    shim.inference_mode = contextlib.nullcontext  # type: ignore[attr-defined]
    # its sharing strategy is for torch tensors; potluck.swarm.forks sets it when torch is imported
    shim.multiprocessing = types.SimpleNamespace(set_sharing_strategy=lambda strategy: None)  # type: ignore[attr-defined]
    return shim


class _Torchless(importlib.abc.Loader):
    """Runs a module with ``import torch`` answered by the shim (only inside that module)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        shim, real_import = _torch_for_mpfuture(), builtins.__import__

        def imports(name: str, *args: Any, **kwargs: Any) -> Any:
            return shim if name == "torch" else real_import(name, *args, **kwargs)

        module.__dict__["__builtins__"] = {**builtins.__dict__, "__import__": imports}
        exec(self.loader.get_code(module.__name__), module.__dict__)


class _ExportsOnDemand(importlib.abc.Loader):
    """Runs a package's ``__init__`` without its ``from <package>.X import a, b`` statements; ``a`` and
    ``b`` are imported when first asked for (the module's ``__getattr__``)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__
        tree = ast.parse(self.loader.get_source(name), self.loader.get_filename(name))
        exports: dict[str, tuple[str, str]] = {}
        body = []
        for node in tree.body:
            source = (node.module or "") if isinstance(node, ast.ImportFrom) else ""
            if isinstance(node, ast.ImportFrom) and node.level == 0 and source.startswith(name + "."):
                for alias in node.names:
                    exports[alias.asname or alias.name] = (source, alias.name)
            else:
                body.append(node)
        tree.body = body

        def __getattr__(attr: str) -> Any:
            if attr not in exports:
                raise AttributeError(f"module {name!r} has no attribute {attr!r}")
            source, original = exports[attr]
            value = getattr(importlib.import_module(source), original)
            setattr(module, attr, value)
            return value

        module.__dict__["__getattr__"] = __getattr__
        module.__dict__["__all__"] = list(exports)
        exec(compile(tree, self.loader.get_filename(name), "exec"), module.__dict__)


class LeanFinder(importlib.abc.MetaPathFinder):
    """Finds the modules above with the next finder and wraps their loaders."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in DEFERRED and name not in ON_DEMAND_EXPORTS and name != TORCHLESS:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                if name in DEFERRED:
                    spec.loader = importlib.util.LazyLoader(spec.loader)
                elif name in ON_DEMAND_EXPORTS:
                    spec.loader = _ExportsOnDemand(spec.loader)
                else:
                    spec.loader = _Torchless(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once per process)."""
    if not any(type(f).__name__ == "LeanFinder" for f in sys.meta_path):
        sys.meta_path.insert(0, LeanFinder())
