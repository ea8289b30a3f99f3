"""The run manifest: a run's rules, signed by its creator; the run id is the hash of the signed bytes.

Canonical form:

* body = msgpack ``["potluck/manifest/v1", {field: value, ...}]``, the map's keys sorted by code point
  (``task_args`` too), floats as float64, ints as the smallest msgpack int, ``max_update_norm`` nil
  when absent, ``allow`` sorted and unique.
* signature = Ed25519 by the creator over ``sha256(body)`` (the domain tag is inside the body).
* signed bytes (:meth:`Manifest.to_bytes`) = msgpack ``[body: bin, signature: bin(64)]``;
  ``run_id = sha256(signed bytes)`` hex. A node that fetches a manifest by run id checks
  ``sha256(bytes) == run_id`` and then the signature (:meth:`Manifest.from_bytes` does both).

On disk the manifest is a TOML file next to the genesis weights (:mod:`potluck.runfiles`; no I/O here).

The genesis version is ``version_hash(get_task(task, task_args).init_state(seed))`` (potluck.tasks), or
that of a pre-trained state of the same model (`potluck init --genesis`, potluck.runfiles).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any

import msgpack

from potluck.groups import GroupError, GroupRules
from potluck.identity import SIGNATURE_SIZE, NodeIdentity, verify
from potluck.merge.probe import ProbeError, probe_args
from potluck.wire import WireError, bounded_unpackb

__all__ = ["DOMAIN", "MAX_MANIFEST_BYTES", "Manifest", "ManifestError", "create_manifest"]

DOMAIN = "potluck/manifest/v1"
MAX_MANIFEST_BYTES = 1 << 20  # 1 MiB: room for an allowlist of ~10k node ids
MAX_ALLOW = 10_000
MAX_TASK_ARGS = 256
_MAX_STR = 4096
_INT64 = 1 << 63
_HEX64 = re.compile(r"[0-9a-f]{64}")
WEIGHTINGS = ("samples",)
VALUE_ENCODINGS = ("int8", "fp16", "sign")
TOPK_SCOPES = ("tensor", "model")  # potluck.updates.sparsify.SCOPES
ADMISSIONS = ("open", "allowlist")
PLACEMENTS = ("auto", "gathered", "sliced", "allreduce", "dense")  # where merges run (rounds/placement.py)
PACINGS = ("clock", "ready")  # when a round stops collecting (rounds/schedule.py)
REVERTS = ("creator", "allowlist", "anyone")  # who may propose a revert (vcs/revert.py)

TaskArg = str | int | float
# fields added after the first manifests: absent from the canonical body while at their default
_OMITTED_AT_DEFAULT: dict[str, Any] = {
    "probation_rounds": 0, "placement": "auto", "pacing": "clock", "target_samples": 0, "groups": [],
    "max_rank": 64, "parent_run": "", "parent_version": "", "topk_scope": "tensor", "revert": "creator",
    "probe": {}, "start_density": 0.0, "start_rounds": 0,
}  # fmt: skip


class ManifestError(ValueError):
    """A manifest that is malformed, badly signed, or does not match its run id."""


def _is_int(x: Any) -> bool:
    return type(x) is int


def _is_number(x: Any) -> bool:
    return type(x) in (int, float)


def _check_hex(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ManifestError(f"{what} must be 64 lowercase hex digits, got {str(value)[:80]!r}")
    return value


def _check_float(value: Any, what: str, *, positive: bool = False) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise ManifestError(f"{what} must be a finite number, got {value!r}")
    value = float(value)
    if positive and not value > 0:
        raise ManifestError(f"{what} must be > 0, got {value!r}")
    return value


def _check_int(value: Any, what: str, lo: int, hi: int = _INT64 - 1) -> int:
    if not _is_int(value) or not lo <= value <= hi:
        raise ManifestError(f"{what} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _check_str(value: Any, what: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_STR:
        raise ManifestError(f"{what} must be a non-empty string")
    if choices is not None and value not in choices:
        raise ManifestError(f"{what} must be one of {list(choices)}, got {value!r}")
    return value


def _check_task_args(args: Any, what: str = "task_args") -> dict[str, TaskArg]:
    if not isinstance(args, Mapping):
        raise ManifestError(f"{what} must be a table of str -> str | int | float")
    if len(args) > MAX_TASK_ARGS:
        raise ManifestError(f"{what} has {len(args)} entries > {MAX_TASK_ARGS}")
    out: dict[str, TaskArg] = {}
    for key in sorted(args):
        value = args[key]
        _check_str(key, f"{what} key")
        if isinstance(value, str):
            _check_str(value, f"{what}.{key}")
        elif _is_int(value):
            _check_int(value, f"{what}.{key}", -_INT64)
        elif type(value) is float:
            _check_float(value, f"{what}.{key}")
        else:
            raise ManifestError(f"{what}.{key} must be str, int or float, got {type(value).__name__}")
        out[key] = value
    return out


@dataclass(frozen=True)
class Manifest:
    """A run's rules. Build one with :func:`create_manifest` (which signs it); values are validated
    and normalized on construction (floats as float, ``allow`` sorted and unique).

    Fields:
      task: "toy", "digits" or "package.module:factory" (see potluck.tasks.get_task)
      task_args: keyword arguments of the task factory (str -> str | int | float)
      genesis: version hash of round 0's base model
      round_seconds: length of a round; under "clock" pacing round r spans
        [start_time + r*round_seconds, + round_seconds); under "ready" pacing it is the upper bound
      start_time: unix seconds at which round 0 starts
      pacing: "clock" (every round lasts round_seconds) or "ready" (a round stops collecting once every
        contributor that declared itself for it has published, or ``target_samples`` are in; the next
        opens as soon as its base is committed; see potluck.rounds.schedule)
      target_samples: under "ready" pacing, close a round once its updates carry this many samples (0: off)
      placement: where the merge runs: "auto" (the cheapest the strategy allows, per attempt), "gathered",
        "sliced", "allreduce" or "dense" (see potluck.rounds.placement)
      weighting: "samples": an update weighs ``min(sample_count, weight_cap)``
      weight_cap: cap on one update's weight (<= 2**24, see potluck.rounds.fixedpoint)
      outer_lr: V_{r+1} = V_r + outer_lr * weighted mean delta
      density: fraction of each tensor's entries an update may carry (top-k), in (0, 1]
      start_density, start_rounds: rounds below start_rounds use start_density (both 0: off; sparsify)
      values: value encoding of updates, "int8", "fp16" or "sign" (1 bit a value, with error feedback)
      topk_scope: "tensor" (the top ``density`` of each tensor) or "model" (of all entries together)
      admission: "open", or "allowlist" (only authors in ``allow`` are admitted)
      allow: node ids (hex) admitted under "allowlist"
      quorum: signatures on the same commit needed to consider a round committed (>= 1)
      max_update_norm: bound on an update's L2 norm, or None
      max_rank: the largest rank of a low-rank entry (docs/update-format.md) unless its group sets another
      groups: parameter-group rules, in order (``PATTERN:OPTION,...``, potluck.groups): strategy, freeze, caps
      probation_rounds: an author's updates weigh 0 for its first N committed rounds (0: off; defence)
      parent_run, parent_version: lineage of a fork (`potluck fork`): the run id and the version of
        it this run starts from (then ``genesis == parent_version``); both empty for a new run
      revert: who may propose a revert (`potluck revert`): "creator", "allowlist" (``allow``) or "anyone"
      probe: {} (off), or the probe set the merge scores updates on (potluck.merge.probe ``probe_args``)
      creator: node id (hex) of the signer
      created: unix seconds of creation
      seed: seed of ``Task.init_state`` that produced ``genesis`` (unless it was pre-trained)
      signature: Ed25519 signature by ``creator`` (empty until signed)
    """

    task: str
    genesis: str
    creator: str
    round_seconds: float = 60.0
    start_time: float = 0.0
    task_args: Mapping[str, TaskArg] = field(default_factory=dict)
    strategy: str = "weighted_mean"
    strategy_args: Mapping[str, TaskArg] = field(default_factory=dict)
    placement: str = "auto"
    pacing: str = "clock"
    target_samples: int = 0
    weighting: str = "samples"
    weight_cap: int = 10_000
    outer_lr: float = 1.0
    density: float = 0.01
    start_density: float = 0.0
    start_rounds: int = 0
    values: str = "int8"
    topk_scope: str = "tensor"
    admission: str = "open"
    allow: tuple[str, ...] = ()
    quorum: int = 1
    max_update_norm: float | None = None
    max_rank: int = 64
    groups: tuple[str, ...] = ()
    probation_rounds: int = 0
    parent_run: str = ""
    parent_version: str = ""
    revert: str = "creator"
    probe: Mapping[str, TaskArg] = field(default_factory=dict)
    created: float = 0.0
    seed: int = 0
    signature: bytes = b""

    def __post_init__(self) -> None:
        def norm(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        _check_str(self.task, "task")
        _check_hex(self.genesis, "genesis")
        _check_hex(self.creator, "creator")
        norm("round_seconds", _check_float(self.round_seconds, "round_seconds", positive=True))
        norm("start_time", _check_float(self.start_time, "start_time"))
        norm("task_args", _check_task_args(self.task_args))
        _check_str(self.strategy, "strategy")
        norm("strategy_args", _check_task_args(self.strategy_args, "strategy_args"))
        _check_str(self.placement, "placement", PLACEMENTS)
        _check_str(self.pacing, "pacing", PACINGS)
        _check_str(self.revert, "revert", REVERTS)
        _check_int(self.target_samples, "target_samples", 0, 1 << 40)
        _check_str(self.weighting, "weighting", WEIGHTINGS)
        _check_int(self.weight_cap, "weight_cap", 1, 1 << 24)
        norm("outer_lr", _check_float(self.outer_lr, "outer_lr", positive=True))
        density = _check_float(self.density, "density", positive=True)
        if density > 1:
            raise ManifestError(f"density must be in (0, 1], got {density}")
        norm("density", density)
        norm("start_density", _check_float(self.start_density, "start_density"))
        _check_int(self.start_rounds, "start_rounds", 0, 1 << 40)
        if not 0 <= self.start_density <= 1 or (self.start_density > 0) != (self.start_rounds > 0):
            raise ManifestError("start_density in (0, 1] with start_rounds >= 1, or both 0 (no sparse start)")
        _check_str(self.values, "values", VALUE_ENCODINGS)
        _check_str(self.topk_scope, "topk_scope", TOPK_SCOPES)
        _check_str(self.admission, "admission", ADMISSIONS)
        if isinstance(self.allow, str | bytes) or not hasattr(self.allow, "__iter__"):
            raise ManifestError("allow must be a list of node ids")
        allow = tuple(sorted({_check_hex(a, "allow entry") for a in self.allow}))
        if len(allow) > MAX_ALLOW:
            raise ManifestError(f"allow has {len(allow)} entries > {MAX_ALLOW}")
        norm("allow", allow)
        _check_int(self.quorum, "quorum", 1, 1 << 16)
        if self.max_update_norm is not None:
            norm("max_update_norm", _check_float(self.max_update_norm, "max_update_norm", positive=True))
        _check_int(self.max_rank, "max_rank", 1, 1 << 20)
        if isinstance(self.groups, str | bytes) or not hasattr(self.groups, "__iter__"):
            raise ManifestError("groups must be a list of rules")
        try:
            norm("groups", GroupRules.canonical(self.groups))
            GroupRules(self.groups)
            norm("probe", probe_args(self.probe))
        except (GroupError, ProbeError) as e:
            raise ManifestError(str(e)) from None
        _check_int(self.probation_rounds, "probation_rounds", 0, 1 << 20)
        if self.parent_run or self.parent_version:
            _check_hex(self.parent_run, "parent_run")
            if self.parent_version != self.genesis:
                raise ManifestError("a fork's parent_version is its genesis (the version it starts from)")
        norm("created", _check_float(self.created, "created"))
        _check_int(self.seed, "seed", 0, (1 << 64) - 1)
        if not isinstance(self.signature, bytes) or len(self.signature) not in (0, SIGNATURE_SIZE):
            raise ManifestError("signature must be empty or 64 bytes")

    def __hash__(self) -> int:
        return hash(self.body())

    # ----------------------------------------------------------------------------------- encoding

    def field_values(self) -> dict[str, Any]:
        """The fields but the signature, keys sorted, as the canonical body holds them."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "signature"}
        for name in ("task_args", "strategy_args", "probe"):
            values[name] = dict(values[name])
        values["allow"] = list(values["allow"])
        values["groups"] = list(values["groups"])
        for name, default in _OMITTED_AT_DEFAULT.items():
            if values[name] == default:
                del values[name]
        return {key: values[key] for key in sorted(values)}

    def body(self) -> bytes:
        """The canonical unsigned encoding (what the signature covers, through its sha256)."""
        return msgpack.packb([DOMAIN, self.field_values()], use_bin_type=True)

    @property
    def signed(self) -> bool:
        return bool(self.signature)

    def verify(self) -> bool:
        """True when ``signature`` is the creator's valid signature of the body."""
        return verify(bytes.fromhex(self.creator), self.signature, hashlib.sha256(self.body()).digest())

    def to_bytes(self) -> bytes:
        """The signed canonical encoding; ``sha256`` of it is the run id."""
        if not self.signed:
            raise ManifestError("the manifest is not signed")
        return msgpack.packb([self.body(), self.signature], use_bin_type=True)

    @cached_property
    def run_id(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, run_id: str | None = None) -> Manifest:
        """Decode and verify signed bytes (from a peer); with ``run_id``, also check that they hash to it.

        Raises :class:`ManifestError` and nothing else.
        """
        try:
            return cls._from_bytes(data, run_id)
        except ManifestError:
            raise
        except Exception as e:  # a bug must not become a crash on peer input
            raise ManifestError(f"bad manifest: unexpected {type(e).__name__}: {e}") from None

    @classmethod
    def _from_bytes(cls, data: bytes, run_id: str | None) -> Manifest:
        if run_id is not None and hashlib.sha256(data).hexdigest() != run_id:
            raise ManifestError(f"manifest bytes do not hash to run id {run_id}")
        try:
            envelope = bounded_unpackb(data, MAX_MANIFEST_BYTES, 1, max_array_len=2, max_map_len=0)
        except WireError as e:
            raise ManifestError(f"bad manifest envelope: {e}") from None
        if (
            type(envelope) is not list
            or len(envelope) != 2
            or type(envelope[0]) is not bytes
            or type(envelope[1]) is not bytes
        ):
            raise ManifestError("manifest envelope must be [body: bin, signature: bin]")
        body_bytes, signature = envelope
        try:
            body = bounded_unpackb(
                body_bytes, MAX_MANIFEST_BYTES, 3, max_str_len=_MAX_STR, max_array_len=MAX_ALLOW,
                max_map_len=MAX_TASK_ARGS, max_bin_len=0,
            )  # fmt: skip
        except WireError as e:
            raise ManifestError(f"bad manifest body: {e}") from None
        if type(body) is not list or len(body) != 2 or body[0] != DOMAIN or type(body[1]) is not dict:
            raise ManifestError(f"manifest body must be [{DOMAIN!r}, {{...}}]")
        manifest = cls.from_values(body[1], signature)
        if manifest.body() != body_bytes:
            raise ManifestError("manifest body is not canonical")
        if not manifest.verify():
            raise ManifestError(f"bad manifest signature (creator {manifest.creator})")
        return manifest

    @classmethod
    def from_values(cls, values: Mapping[str, Any], signature: bytes) -> Manifest:
        """Rebuild a manifest from its field values (a decoded body, or a TOML file's keys); validates."""
        names = {f.name for f in fields(cls)} - {"signature"}
        if unknown := set(values) - names:
            raise ManifestError(f"unknown manifest fields: {sorted(unknown)}")
        if missing := {"task", "genesis", "creator"} - set(values):
            raise ManifestError(f"missing manifest fields: {sorted(missing)}")
        values = dict(values)
        for name in ("allow", "groups"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values, signature=signature)

    # ------------------------------------------------------------------------------------ rules

    @cached_property
    def group_rules(self) -> GroupRules:
        return GroupRules(self.groups)

    def update_weight(self, sample_count: int) -> int:
        """The merge weight of an update with ``sample_count`` samples."""
        return max(0, min(int(sample_count), self.weight_cap))

    def admits(self, node_id: str) -> bool:
        """Whether updates by ``node_id`` (hex) are admitted."""
        return self.admission == "open" or node_id in self.allow


def create_manifest(
    identity: NodeIdentity,
    task: str,
    genesis_hash: str,
    *,
    round_seconds: float = 60.0,
    start_time: float | None = None,
    task_args: Mapping[str, TaskArg] | None = None,
    created: float | None = None,
    **rules: Any,
) -> Manifest:
    """A manifest created and signed by ``identity``. ``rules`` are the other :class:`Manifest`
    fields (weight_cap, outer_lr, density, values, admission, allow, quorum, max_update_norm, seed).
    ``start_time`` defaults to now (round 0 starts at once), ``created`` to now."""
    now = time.time()
    if "signature" in rules or "creator" in rules:
        raise ManifestError("creator and signature come from the identity")
    unsigned = Manifest(
        task=task, genesis=genesis_hash, creator=identity.node_id, round_seconds=round_seconds,
        start_time=now if start_time is None else start_time, task_args=dict(task_args or {}),
        created=now if created is None else created, **rules,
    )  # fmt: skip
    signature = identity.sign(hashlib.sha256(unsigned.body()).digest())
    return replace(unsigned, signature=signature)


def is_run_id(text: str) -> bool:
    """A run id is the sha256 (64 lowercase hex digits) of a signed manifest."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
