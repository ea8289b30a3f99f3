"""`potluck revert`: a signed proposal to take past updates back out of the model, its checks and its
arithmetic.

A revert carries no delta of its own, only the ids of the updates it reverts, so every node recomputes
the same step from the stored signed updates and the commits' weights (nothing else can be smuggled in):
the record is ``pack_pair(body, signature)``, body = ``["potluck/revert/v1", run, author, reverts]``
(``reverts``: sorted unique update ids), signed by ``author``. What a round takes is the same ids in a
revert-kind update (:func:`as_update`: the update body's ``reverts``, no tensors, weight 0): nodes
validate it against their history before its round (:func:`validation_hook`), the gathered merge and
``verify`` add :func:`round_step`, and ``show``/``log``/``blame`` read it back (:func:`reverted_by_round`).

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

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from potluck.errors import ConfigError
from potluck.identity import NodeIdentity, node_id_of
from potluck.manifest import Manifest
from potluck.merge import DEFAULT_STRATEGY
from potluck.rounds.fixedpoint import Layout
from potluck.signed import RecordError, RecordFormat
from potluck.updates.codec import ParsedUpdate, SignedUpdate, Update, encode_update, parse_update
from potluck.updates.reasons import Reason, UpdateRejected
from potluck.vcs.numbers import merged_step
from potluck.vcs.repo import HistoryRepo

__all__ = [
    "FORMAT", "Revert", "RevertError", "Target", "as_update", "check", "of_update", "revert_step",
    "reverted", "reverted_by_round", "round_step", "round_targets", "sign", "targets_of_author",
    "unsupported", "validation_hook",
]  # fmt: skip

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


def _ids(reverts: Iterable[str]) -> tuple[str, ...]:
    ids = tuple(sorted(set(reverts)))
    if not ids or not all(is_id(u) for u in ids):
        raise ValueError("a revert names one or more update ids (64 hex digits)")
    return ids


def sign(identity: NodeIdentity, run: str, reverts: Iterable[str]) -> bytes:
    ids = _ids(reverts)
    body = FORMAT.body(run, identity.public_key, list(ids))
    return FORMAT.sign(identity, identity.public_key, body)


def as_update(identity: NodeIdentity, run: str, round_: int, base: str, reverts: Iterable[str]) -> bytes:
    """The proposal as a revert-kind update for round ``round_`` on version ``base``: what a node takes
    into a round (no tensors, sample_count 0, the ids in the body's ``reverts``; docs/update-format.md)."""
    ids = _ids(reverts)
    seq = time.time_ns() // 1_000_000  # as `potluck update make`: above any earlier update by this key
    return encode_update(Update(run, round_, base, identity.public_key, seq, 0, (), reverts=ids), identity)


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


def _merged_in(repo: HistoryRepo, before: int | None) -> dict[str, int]:
    """update id -> the round (before ``before``) whose commit lists it."""
    rounds = [e["round"] for e in repo.log if before is None or e["round"] < before]
    return {uid: r for r in rounds for uid in repo.commit(r).updates}


def _committed_reverts(repo: HistoryRepo, before: int | None) -> list[tuple[int, str, tuple[str, ...]]]:
    """(round, revert id, the ids it names) of the reverts the commits before ``before`` merged."""
    out = []
    for uid, r in _merged_in(repo, before).items():
        try:  # the header only: a training update's payloads are not decoded
            targets = parse_update(repo.updates.get(uid), verify_signature=False).reverts
        except (OSError, KeyError, UpdateRejected):
            continue  # not held or damaged here: verify names it
        if targets:
            out.append((r, uid, targets))
    return sorted(out)


def reverted(repo: HistoryRepo, before: int | None = None) -> dict[str, str]:
    """reverted update id -> the revert that took it out, over the commits of rounds before ``before``."""
    return {t: uid for _, uid, targets in _committed_reverts(repo, before) for t in targets}


def reverted_by_round(repo: HistoryRepo) -> dict[int, list[str]]:
    """round -> the update ids its commit's reverts name (what `log` and `show` list)."""
    out: dict[int, list[str]] = {}
    for r, _, targets in _committed_reverts(repo, None):
        out[r] = sorted(set(out.get(r, [])) | set(targets))
    return out


def of_update(signed: SignedUpdate) -> Revert:
    """The proposal a revert-kind update carries (its own signature covers the ids)."""
    u = signed.update
    return Revert(u.run, u.author, u.reverts)


def check(repo: HistoryRepo, revert: Revert, before: int | None = None) -> list[Target]:
    """The updates ``revert`` takes out, as their rounds merged them; :class:`RevertError` when it may not.
    ``before``: the round that would merge it (the history it sees stops there; None: all of it)."""
    manifest = repo.need_manifest()
    if revert.run != manifest.run_id:
        raise RevertError("revert_wrong_run", f"it is for run {revert.run[:16]}, not {manifest.run_id[:16]}")
    if not allowed(manifest, revert.author):
        raise RevertError(
            "revert_not_allowed",
            f"{node_id_of(revert.author)[:16]} may not revert in this run "
            f"(manifest: revert = {manifest.revert!r})",
        )
    merged = _merged_in(repo, before)
    done = reverted(repo, before)
    out = []
    for uid in revert.reverts:
        if uid in done:
            raise RevertError(
                "revert_already_reverted", f"update {uid[:16]}: revert {done[uid][:16]} took it out"
            )
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


def unsupported(manifest: Manifest) -> str:
    """Why rounds of this run cannot merge a revert ("" when they can): the step is the weighted mean's
    arithmetic, and only the gathered merge adds it (a weighted-mean run under ``auto`` always merges
    gathered, rounds/placement.py; a fixed ``sliced`` or ``allreduce`` never does)."""
    if manifest.strategy != DEFAULT_STRATEGY or manifest.group_rules.split_strategies(manifest.strategy):
        return f"the run merges with {manifest.strategy!r} (or per-group strategies), not the weighted mean"
    if manifest.placement not in ("auto", "gathered"):
        return f"the run fixes placement {manifest.placement!r}; a revert merges gathered only"
    return ""


def round_targets(repo: HistoryRepo, reverts: Iterable[SignedUpdate], round_: int) -> list[Target]:
    """Every update the reverts merged in ``round_`` take out, checked against the history before that
    round, each at most once over the history (an update an earlier revert, or another revert of this
    round, took out already is skipped: validation refuses such a revert when it can see the earlier
    one); :class:`RevertError` when one may not."""
    done = reverted(repo, round_)
    out: dict[str, Target] = {}
    for signed in reverts:
        r = of_update(signed)
        ids = tuple(u for u in r.reverts if u not in done and u not in out)
        if ids:
            out |= {t.update_id: t for t in check(repo, Revert(r.run, r.author, ids), before=round_)}
    return [out[u] for u in sorted(out)]


def round_step(
    repo: HistoryRepo, updates: Iterable[SignedUpdate], round_: int, layout: Layout, outer_lr: float
) -> Mapping[str, np.ndarray] | None:
    """The ``extra`` step of round ``round_`` (rounds/merging.py) for the reverts among its ``updates``;
    None when there are none. The gathered merge (engine/gathered.py) and verify (vcs/replay.py) call it."""
    reverts = [u for u in updates if u.update.reverts]
    if not reverts:
        return None
    return revert_step(layout, round_targets(repo, reverts, round_), outer_lr)


def validation_hook(data_dir: Path, manifest: Manifest) -> Callable[[ParsedUpdate], None]:
    """The check a node's update validator runs on a revert (updates/validation.py's ``check_revert``):
    :func:`check` against the history in ``data_dir`` before the revert's round, as UpdateRejected."""

    def check_revert(p: ParsedUpdate) -> None:
        why = unsupported(manifest)
        if why:
            raise UpdateRejected(Reason.REVERT_UNSUPPORTED, why)
        try:
            with HistoryRepo(data_dir, manifest) as repo:
                check(repo, Revert(p.run, p.author, p.reverts), before=p.round)
        except RevertError as e:
            raise UpdateRejected(Reason(e.reason), str(e).split(": ", 1)[1]) from None
        except ConfigError as e:  # no history here yet: nothing it names was merged here
            raise UpdateRejected(Reason.REVERT_UNKNOWN_UPDATE, str(e)) from None

    return check_revert
