"""`potluck revert`: a signed proposal to take past updates back out of the model, its checks and its
arithmetic.

A revert carries no delta of its own, only the ids of the updates it reverts, so every node recomputes
the same step from the stored signed updates and the commits' weights (nothing else can be smuggled in):
the record is ``pack_pair(body, signature)``, body = ``["potluck/revert/v1", run, author, reverts]``
(``reverts``: sorted unique update ids), signed by ``author``.

Arithmetic (weighted-mean runs, the merge of rounds/fixedpoint.py): round r added, before the one cast to
each tensor's dtype, ``outer_lr * QUANTUM * q_u / W_r`` for update u (``q_u = round(w_u * delta_u /
QUANTUM)``, ``W_r`` the commit's total weight: :func:`potluck.vcs.numbers.merged_step`). A revert adds
minus that, with the run's ``outer_lr``, to the float64 step of the round that merges it, before that
round's cast. Later updates that built on the reverted one keep their own deltas: only u's merged
contribution, as it was in its round, is taken out; the float casts of the rounds between leave a
residue of at most about one ulp of each entry per round.

Who may revert is the manifest's ``revert`` rule: ``creator`` (default), ``allowlist`` (the run's
``allow`` list) or ``anyone`` (a participant; the round's quorum still signs the result).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from potluck.errors import ConfigError
from potluck.identity import NodeIdentity, node_id_of
from potluck.manifest import Manifest
from potluck.rounds.fixedpoint import Layout
from potluck.signed import RecordError, RecordFormat
from potluck.updates.codec import SignedUpdate
from potluck.vcs.numbers import merged_step
from potluck.vcs.repo import HistoryRepo

__all__ = ["FORMAT", "Revert", "RevertError", "Target", "check", "revert_step", "sign", "targets_of_author"]

MAX_REVERTS = 1024


class RevertError(ConfigError):
    """A revert that cannot be accepted; ``reason`` is a short code (``revert_not_merged``, ...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class _RecordError(RecordError):
    pass


FORMAT = RecordFormat("potluck/revert/v1", fields=3, max_bytes=96 * MAX_REVERTS, max_depth=2,
                      error=_RecordError, max_bin_len=32, max_array_len=MAX_REVERTS,
                      max_map_len=0)  # fmt: skip


@dataclass(frozen=True)
class Revert:
    run: str
    author: bytes
    reverts: tuple[str, ...]  # sorted unique update ids


@dataclass(frozen=True)
class Target:
    """One reverted update as its round merged it."""

    update_id: str
    round: int
    weight: int
    total_weight: int
    signed: SignedUpdate


def is_id(x: object) -> bool:
    return isinstance(x, str) and len(x) == 64 and not x.strip("0123456789abcdef")


def sign(identity: NodeIdentity, run: str, reverts: Iterable[str]) -> bytes:
    ids = tuple(sorted(set(reverts)))
    if not ids or not all(is_id(u) for u in ids):
        raise ValueError("a revert names one or more update ids (64 hex digits)")
    body = FORMAT.body(run, identity.public_key, list(ids))
    return FORMAT.sign(identity, identity.public_key, body)


def parse(data: bytes) -> Revert:
    """The revert in untrusted ``data``, its signature checked; :class:`RevertError` otherwise."""
    try:
        (run, author, reverts), body, signature = FORMAT.open(data)
        if not isinstance(run, str) or type(author) is not bytes or len(author) != 32:
            raise _RecordError("malformed", "run or author")
        if type(reverts) is not list or not reverts or reverts != sorted(set(reverts)):
            raise _RecordError("malformed", "reverts must be sorted unique update ids")
        if not all(is_id(u) for u in reverts):
            raise _RecordError("malformed", "reverts must be update ids (64 hex digits)")
        FORMAT.check_signature(author, signature, body)
    except RecordError as e:
        raise RevertError("revert_malformed", str(e)) from None
    return Revert(run, author, tuple(reverts))


def allowed(manifest: Manifest, author: bytes) -> bool:
    node = node_id_of(author)
    rule = manifest.revert
    return (
        rule == "anyone"
        or (rule == "creator" and node == manifest.creator)
        or (rule == "allowlist" and node in manifest.allow)
    )


def _merged_in(repo: HistoryRepo) -> dict[str, int]:
    """update id -> the round whose commit lists it."""
    return {uid: e["round"] for e in repo.log for uid in repo.commit(e["round"]).updates}


def check(repo: HistoryRepo, revert: Revert) -> list[Target]:
    """The updates ``revert`` takes out, as their rounds merged them; :class:`RevertError` when it may not."""
    manifest = repo.need_manifest()
    if revert.run != manifest.run_id:
        raise RevertError("revert_wrong_run", f"it is for run {revert.run[:16]}, not {manifest.run_id[:16]}")
    if not allowed(manifest, revert.author):
        raise RevertError(
            "revert_not_allowed",
            f"{node_id_of(revert.author)[:16]} may not revert in this run "
            f"(manifest: revert = {manifest.revert!r})",
        )
    merged = _merged_in(repo)
    out = []
    for uid in revert.reverts:
        if uid not in merged:
            known = repo.updates.has(uid)
            reason, what = (
                ("revert_not_merged", "no commit merged it")
                if known
                else ("revert_unknown_update", "no such update here")
            )
            raise RevertError(reason, f"update {uid[:16]}: {what}")
        commit = repo.commit(merged[uid])
        signed, why = repo.load_update(uid)
        if signed is None:
            raise RevertError("revert_unknown_update", f"update {uid[:16]} (round {commit.round}): {why}")
        weight = repo.weight(signed, repo.seniority(commit.round))
        if weight == 0 or commit.total_weight == 0:
            raise RevertError("revert_not_merged", f"update {uid[:16]} weighed 0 in round {commit.round}")
        out.append(Target(uid, commit.round, weight, commit.total_weight, signed))
    return out


def targets_of_author(repo: HistoryRepo, author: str, rounds: range | None = None) -> list[str]:
    """The ids of the updates by node id ``author`` that commits in ``rounds`` (all when None) merged."""
    ids = []
    for e in repo.log:
        if rounds is not None and e["round"] not in rounds:
            continue
        for mu in repo.merged_updates(repo.commit(e["round"])):
            if mu.author == author and mu.weight:
                ids.append(mu.update_id)
    return sorted(ids)


def revert_step(layout: Layout, targets: Iterable[Target], outer_lr: float) -> Mapping[str, np.ndarray]:
    """tensor name -> the float64 step (flat) that takes ``targets``' merged contributions back out."""
    out: dict[str, np.ndarray] = {}
    for t in targets:
        for name, step in merged_step(layout, t.weight, t.signed, t.total_weight, outer_lr).items():
            out[name] = out[name] - step if name in out else -step
    return out
