"""The flat coordinate system of a model (pure): its floating-point tensors sorted by name, concatenated
in C order, and how that vector is cut into rows of data values and one sentinel for the averager
(potluck.rounds.fixedpoint packs and checks them)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import msgpack
import numpy as np

__all__ = ["ROW", "SPACING", "Layout", "TensorSlot"]

SPACING = 255  # data values per sentinel
ROW = SPACING + 1


@dataclass(frozen=True)
class TensorSlot:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int  # first coordinate in the flat vector
    size: int


@dataclass(frozen=True)
class Layout:
    """The flat coordinate system of a model: its floating-point tensors sorted by name, concatenated
    in C order. Other tensors (integer counters, masks) are ``passthrough``: never averaged."""

    slots: tuple[TensorSlot, ...]
    passthrough: tuple[str, ...]

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> Layout:
        slots, passthrough, offset = [], [], 0
        for name in sorted(state):
            a = np.asarray(state[name])
            if not np.issubdtype(a.dtype, np.floating):
                passthrough.append(name)
                continue
            slots.append(TensorSlot(name, tuple(int(d) for d in a.shape), a.dtype, offset, int(a.size)))
            offset += int(a.size)
        return cls(tuple(slots), tuple(passthrough))

    @property
    def length(self) -> int:
        """L: the number of averaged coordinates."""
        return self.slots[-1].offset + self.slots[-1].size if self.slots else 0

    @property
    def rows(self) -> int:
        return max(1, -(-self.length // SPACING))

    @property
    def packed_length(self) -> int:
        """Length of the float64 vector given to the averager: ``ceil(L / 255) * 256``."""
        return self.rows * ROW

    def slot(self, name: str) -> TensorSlot:
        for s in self.slots:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def digest(self) -> str:
        """sha256 of names, dtypes and shapes: equal on peers that average the same vector."""
        entries = [[s.name, s.dtype.str, list(s.shape)] for s in self.slots]
        return hashlib.sha256(
            msgpack.packb(["potluck/layout/v1", entries, list(self.passthrough)])
        ).hexdigest()

    def check_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Raise ValueError unless ``state`` has exactly this layout."""
        other = Layout.from_state(state)
        if other != self:
            raise ValueError("the state does not match the layout (names, shapes or dtypes differ)")
