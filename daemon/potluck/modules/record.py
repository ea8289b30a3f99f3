"""A module record (pure): a named low-rank adapter plus a routing gate, signed by its author.

Body (canonical msgpack, :class:`potluck.signed.RecordFormat`)::

    ["potluck/module/v1", run_id, name, author, version, trunk, description, adapters, gate]

* ``run_id`` (str), ``name`` (``[a-z0-9][a-z0-9_-]{0,63}``), ``author`` (32-byte Ed25519 key, the
  signer), ``version`` (int >= 1: a later version by the same author supersedes), ``trunk`` (the
  64-hex version hash the module was trained on), ``description`` (str, at most 512 characters);
* ``adapters``: ``[[tensor, rows, cols, rank, A, B], ...]`` sorted by tensor name, no repeats; ``A`` is
  ``rows x rank`` and ``B`` is ``rank x cols`` float32 little-endian row-major bytes; the delta of
  ``tensor`` is ``A @ B`` (:func:`potluck.updates.lowrank.expand`, the same bits on every node);
* ``gate``: ``[w, b]``: ``w`` is ``d_model`` float32 bytes, ``b`` a float; the module's score for a
  token is ``w . h + b`` with ``h`` the trunk's final (post-LayerNorm) hidden state at that token.

Signed as ``pack_pair(body, signature)``; the module id is the SHA-256 hex of those signed bytes.
:func:`open_module` checks bytes, types and the signature; :func:`check_against` checks a record
against a trunk (tensor names, 2-D shapes, rank bounds, gate width, finiteness).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from potluck.identity import PUBLIC_KEY_SIZE, NodeIdentity
from potluck.signed import RecordError, RecordFormat

__all__ = ["MAX_BYTES", "Module", "ModuleRefused", "check_against", "module_id", "open_module", "sign_module"]

MAX_BYTES = 16 << 20  # a module travels like an update; its record stays under this
MAX_ADAPTERS = 256
MAX_DESCRIPTION = 512
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_HASH = re.compile(r"[0-9a-f]{64}")


class ModuleRefused(RecordError):
    """A module record that is not kept; ``reason`` is a short code, the message says why."""


FORMAT = RecordFormat(
    "potluck/module/v1", 8, MAX_BYTES, 4, ModuleRefused, max_str_len=1024, max_array_len=MAX_ADAPTERS
)


@dataclass(frozen=True)
class Module:
    """A decoded module: adapters ``{tensor: (A, B)}`` (float32) and the gate ``(w, b)``."""

    run_id: str
    name: str
    author: bytes
    version: int
    trunk: str
    description: str
    adapters: dict[str, tuple[np.ndarray, np.ndarray]]
    gate_w: np.ndarray
    gate_b: float

    @property
    def max_rank(self) -> int:
        return max((a.shape[1] for a, _ in self.adapters.values()), default=0)

    def payload_bytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.adapters.values()) + self.gate_w.nbytes


def _f32(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, dtype="<f4").tobytes()


def sign_module(identity: NodeIdentity, m: Module) -> bytes:
    """The signed record of ``m`` (its ``author`` must be ``identity``'s key); ValueError on bad fields."""
    _check_header(m.run_id, m.name, m.author, m.version, m.trunk, m.description, ValueError)
    adapters = []
    for tensor in sorted(m.adapters):
        a, b = (np.asarray(x, dtype=np.float32) for x in m.adapters[tensor])
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise ValueError(f"module {m.name}: factors of {tensor} do not multiply: {a.shape}, {b.shape}")
        adapters.append([tensor, a.shape[0], b.shape[1], a.shape[1], _f32(a), _f32(b)])
    gate = [_f32(np.asarray(m.gate_w).reshape(-1)), float(np.float32(m.gate_b))]
    body = FORMAT.body(m.run_id, m.name, m.author, m.version, m.trunk, m.description, adapters, gate)
    return FORMAT.sign(identity, m.author, body)


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def module_id(signed: bytes) -> str:
    return hashlib.sha256(signed).hexdigest()


def _refuse(detail: str, reason: str = "malformed") -> ModuleRefused:
    return ModuleRefused(reason, detail)


def _check_header(run_id, name, author, version, trunk, description, error=_refuse) -> None:
    if type(run_id) is not str or not 0 < len(run_id) <= 128:
        raise error("run id must be a non-empty str of at most 128 characters")
    if type(name) is not str or not _NAME.fullmatch(name):
        raise error(f"module name {name!r} is not [a-z0-9][a-z0-9_-]{{0,63}}")
    if type(author) is not bytes or len(author) != PUBLIC_KEY_SIZE:
        raise error("author must be a 32-byte public key")
    if type(version) is not int or not 1 <= version < 1 << 31:
        raise error(f"module version must be an int >= 1, got {version!r}")
    if type(trunk) is not str or not _HASH.fullmatch(trunk):
        raise error("trunk must be a 64-hex version hash")
    if type(description) is not str or len(description) > MAX_DESCRIPTION:
        raise error(f"description must be a str of at most {MAX_DESCRIPTION} characters")


def _floats(data: object, count: int, what: str) -> np.ndarray:
    if type(data) is not bytes or len(data) != 4 * count:
        raise _refuse(f"{what}: expected {count} float32 values")
    out = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(out).all():
        raise _refuse(f"{what}: NaN or infinite values", "non_finite")
    return out


def open_module(signed: bytes) -> Module:
    """The module in untrusted ``signed`` bytes: types, sizes, finiteness, then the author's signature."""
    fields, body, signature = FORMAT.open(signed)
    run_id, name, author, version, trunk, description, adapters, gate = fields
    _check_header(run_id, name, author, version, trunk, description)
    if type(adapters) is not list or not adapters:
        raise _refuse("a module has at least one adapter")
    decoded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for entry in adapters:
        if type(entry) is not list or len(entry) != 6:
            raise _refuse("an adapter is [tensor, rows, cols, rank, A, B]")
        tensor, rows, cols, rank, a, b = entry
        if type(tensor) is not str or not tensor or any(type(v) is not int for v in (rows, cols, rank)):
            raise _refuse("an adapter's tensor is a str and rows, cols, rank ints")
        if decoded and tensor <= max(decoded):
            raise _refuse(f"adapters are sorted by tensor name without repeats ({tensor!r})")
        if not (1 <= rows < 1 << 24 and 1 <= cols < 1 << 24):
            raise _refuse(f"{tensor}: shape {rows} x {cols} out of range")
        if not 1 <= rank <= min(rows, cols):
            raise _refuse(f"{tensor}: rank {rank} not in [1, {min(rows, cols)}]", "rank_exceeded")
        decoded[tensor] = (
            _floats(a, rows * rank, f"{tensor}: A").reshape(rows, rank),
            _floats(b, rank * cols, f"{tensor}: B").reshape(rank, cols),
        )
    if type(gate) is not list or len(gate) != 2 or type(gate[0]) is not bytes or type(gate[1]) is not float:
        raise _refuse("the gate is [w bytes, b float]")
    if len(gate[0]) % 4 or not gate[0]:
        raise _refuse("the gate's w is float32 bytes")
    gate_w = _floats(gate[0], len(gate[0]) // 4, "gate w")
    if not math.isfinite(gate[1]):
        raise _refuse("gate b: NaN or infinite", "non_finite")
    FORMAT.check_signature(author, signature, body)
    return Module(run_id, name, author, version, trunk, description, decoded, gate_w, gate[1])


def check_against(
    m: Module, run_id: str, shapes: Mapping[str, tuple[int, ...]], gate_dim: int, max_rank: int | None = None
) -> None:
    """ModuleRefused unless ``m`` fits this run's trunk: its run, its tensors' 2-D shapes, the rank
    limit (``max_rank``, the run's; None for none), the gate's width (the trunk's hidden size)."""
    if m.run_id != run_id:
        raise _refuse(f"module {m.name} is for run {m.run_id!r}, not {run_id!r}", "wrong_run")
    for tensor, (a, b) in m.adapters.items():
        if tensor not in shapes:
            raise _refuse(f"module {m.name}: no tensor {tensor!r} in the trunk", "shape_mismatch")
        if tuple(shapes[tensor]) != (a.shape[0], b.shape[1]):
            raise _refuse(
                f"module {m.name}: {tensor} is {tuple(shapes[tensor])} in the trunk, "
                f"the adapter makes {(a.shape[0], b.shape[1])}",
                "shape_mismatch",
            )
        if max_rank is not None and a.shape[1] > max_rank:
            raise _refuse(
                f"module {m.name}: {tensor} rank {a.shape[1]} > the run's {max_rank}", "rank_exceeded"
            )
    if m.gate_w.size != gate_dim:
        raise _refuse(
            f"module {m.name}: gate width {m.gate_w.size}, the trunk's is {gate_dim}", "shape_mismatch"
        )
