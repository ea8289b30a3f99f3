"""`potluck verify`: a node's history replayed from genesis (or from a stored version), checked whole.

For each recorded commit, in round order, the first failed check is the divergence reported (its round,
the version the commit names, what failed); nothing after it is checked:

1. the commit is of the manifest's run and its parent is the previous version (the genesis first);
2. its stored signatures verify, are by its participants, and number at least the manifest's quorum;
3. every update it lists is held here, decodes, is signed by its author (the update id is the hash of
   its body) and passes the validator the round used (run, round window, base, admission, replay,
   equivocation, a revert's check against the history before its round, shapes, indices, finite
   values, norm), with one validator for the whole replay so an
   update merged twice or a sequence number reused across rounds fails too; its authors are the
   commit's contributors;
4. the merge recomputed from those updates with the manifest's strategy (per parameter group where the
   groups pick their own), weights (probation counted in the history), round seed, the step of its
   reverts (vcs/revert.py), for a history-aware strategy the merged steps of the commits before it
   (from the replayed versions; before ``start``, from the stored ones), and in a run with a probe set
   the probe rule's drops (the set from the task, checked against the manifest's hash; where it keeps
   a record, from that of the commit that made the previous version), onto the replayed previous
   version, gives the total weight, the version hash (bit for bit: the hash covers every byte) and the
   probe record the commit names;
5. the version file stored for it, if any, hashes to its name.

The replay carries its own recomputed state forward, so a damaged stored version shows at step 5 of
its own round, not as a wrong merge later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from potluck.hashing import tensor_hashes, version_hash
from potluck.merge.record import next_record
from potluck.rounds.commit import Commit
from potluck.rounds.fixedpoint import Layout
from potluck.rounds.merging import (
    HistoryGap,
    RunMerge,
    history_chain,
    history_steps,
    merge_round,
    round_seed,
)
from potluck.runfiles import run_context
from potluck.store.versions import CorruptVersion, VersionNotFound
from potluck.updates.codec import parse_update
from potluck.updates.reasons import UpdateRejected
from potluck.updates.validation import UpdateValidator
from potluck.vcs import revert
from potluck.vcs.repo import HistoryRepo, RepoError, run_merge_of

__all__ = ["Divergence", "verify"]


class Divergence(Exception):
    """The first check that failed."""

    def __init__(self, round_: int | None, version: str, what: str) -> None:
        super().__init__(what)
        self.round, self.version, self.what = round_, version, what


def verify(
    repo: HistoryRepo, start: str | None = None, progress: Callable[[dict], None] | None = None
) -> dict:
    """Replay ``repo`` from the genesis (or from the stored version ``start``); a report dict with
    ``ok`` and, when not, the first divergence's ``round``, ``version`` and ``what``."""
    manifest = repo.need_manifest()
    report: dict[str, Any] = {"ok": True, "run_id": manifest.run_id, "from": start or manifest.genesis,
                              "rounds": 0, "signatures": 0, "updates": 0}  # fmt: skip
    how = run_merge_of(manifest)
    base = start or manifest.genesis
    committed_in = repo.round_of(base) if start else None
    start_round = -1 if committed_in is None else committed_in  # the genesis: before round 0
    try:
        state = repo.versions.get(base)
        hook = revert.validation_hook(repo.data_dir, manifest)
        context = dataclasses.replace(run_context(manifest, repo.versions), check_revert=hook)
    except VersionNotFound as e:
        return _failed(
            report, Divergence(committed_in, str(e.args[0]), "the version file is not stored here")
        )
    except CorruptVersion as e:
        return _failed(report, Divergence(committed_in, base, f"the stored version is damaged: {e}"))
    layout = Layout.from_state(state)
    validator = UpdateValidator(context)
    previous: Commit | None = None
    recent = {base: state}  # the replayed versions a history-aware merge may still look back to
    for entry in repo.log:
        if entry["round"] <= start_round:
            continue
        commit = repo.commit(entry["round"])
        try:
            _check_round(repo, commit, base, previous, recent, layout, validator, how, report)
        except Divergence as d:
            return _failed(report, d)
        report["rounds"] += 1
        base, previous = commit.version, commit
        if progress is not None:
            progress({"round": commit.round, "version": commit.version, "updates": len(commit.updates)})
    report["latest"] = base
    return report


def _record_before(repo: HistoryRepo, base: str, fail: Callable[[str], Divergence]) -> dict[str, float]:
    """The probe record before the round onto ``base``: that of the recorded commit that made it."""
    if base == repo.need_manifest().genesis:
        return {}
    made = repo.history.made(base)
    if made is None:
        raise fail(f"its probe record is that of the commit of {base[:16]}, which is not recorded here")
    return dict(made[0].record)


def _failed(report: dict, d: Divergence) -> dict:
    return report | {"ok": False, "round": d.round, "version": d.version, "what": d.what}


def _check_round(
    repo: HistoryRepo,
    commit: Commit,
    base: str,
    previous: Commit | None,
    recent: dict[str, dict[str, np.ndarray]],
    layout: Layout,
    validator: UpdateValidator,
    how: RunMerge,
    report: dict[str, Any],
) -> dict[str, np.ndarray]:
    """The replayed version of ``commit`` (from ``recent[base]``, the replayed version ``base``), or
    :class:`Divergence`. ``recent`` keeps the replayed versions a later round's history may need."""
    manifest = repo.need_manifest()
    r, v = commit.round, commit.version

    def fail(what: str) -> Divergence:
        return Divergence(r, v, what)

    if commit.run_id != manifest.run_id:
        raise fail(f"the commit is of run {commit.run_id[:16]}, not {manifest.run_id[:16]}")
    if commit.parent != base:
        raise fail(f"its parent is {commit.parent[:16]}, the previous version is {base[:16]}")
    participants = set(commit.participants)
    signatures = repo.history.signatures(r)
    for s in signatures:
        if s.node_id not in participants:
            raise fail(f"a signature by {s.node_id[:16]}, who is not a participant")
        if not s.verify(commit.id):
            raise fail(f"the signature by {s.node_id[:16]} does not verify")
    if len(signatures) < manifest.quorum:
        raise fail(f"{len(signatures)} participant signature(s), the quorum is {manifest.quorum}")
    report["signatures"] += len(signatures)

    raw = {}
    for uid in commit.updates:
        if not repo.updates.has(uid):
            raise fail(f"update {uid[:16]} is not held here: its merge cannot be recomputed")
        raw[uid] = repo.updates.get(uid)
    parsed = {}
    for uid, data in raw.items():
        try:
            p = parse_update(data, validator.context.limits)
        except UpdateRejected as e:
            raise fail(f"update {uid[:16]}: {e}") from None
        if p.update_id != uid:
            raise fail(f"update {uid[:16]}: its stored bytes are update {p.update_id[:16]}")
        parsed[uid] = p
    bases = {commit.parent} | ({previous.parent} if previous and manifest.pacing == "ready" else set())
    validator.context = dataclasses.replace(validator.context, round=r, known_bases=frozenset(bases))
    seniority = repo.seniority(r)
    weighted = []
    for uid in sorted(parsed, key=lambda u: (parsed[u].round, parsed[u].seq, u)):
        try:
            signed = validator.validate(raw[uid])
        except UpdateRejected as e:
            raise fail(f"update {uid[:16]} by {parsed[uid].author.hex()[:16]}: {e}") from None
        weighted.append((repo.weight(signed, seniority), signed))
    report["updates"] += len(weighted)
    authors = sorted({s.update.author.hex() for _, s in weighted})
    if tuple(authors) != commit.contributors:
        raise fail("its contributors are not the authors of its updates")

    try:
        extra = revert.round_step(repo, [s for _, s in weighted], r, layout, manifest.outer_lr)
    except revert.RevertError as e:
        raise fail(f"its revert: {e}") from None
    seed = round_seed(commit.run_id, r)
    state, steps = recent[base], None
    if how.history:
        try:
            chain = history_chain(base, manifest.genesis, repo.history.parent_of, how.history)
            steps = history_steps(
                [recent[c] if c in recent else repo.state(c) for c in chain], manifest.outer_lr
            )
        except (HistoryGap, RepoError) as e:
            raise fail(f"its merge needs the steps of the last {how.history} commits: {e}") from None
        for old in set(recent) - set(chain):
            del recent[old]
    else:
        recent.clear()
    record, scores = _record_before(repo, base, fail) if how.keeps_record else None, {}
    new_state, total = merge_round(
        state, layout, weighted, manifest, how.merging, seed, extra, steps, how.probe, None, record, scores
    )
    if record is not None and how.probe is not None:
        if next_record(record, scores, how.probe.decay) != dict(commit.record):
            raise fail("the probe record it names is not the one its recomputed merge gives")
    elif commit.record:
        raise fail("it names a probe record, and the run keeps none")
    if total != commit.total_weight:
        raise fail(f"the updates weigh {total} in all, the commit says {commit.total_weight}")
    got = version_hash(new_state)
    if got != v:
        hashes = tensor_hashes(new_state)
        differ = sorted(n for n in hashes if hashes[n] != commit.tensor_hashes.get(n))
        raise fail(
            f"the merge of its {len(weighted)} stored update(s) gives {got[:16]}, not the committed "
            f"{v[:16]} (tensors that differ: {', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''})"
        )
    if repo.versions.has(v):
        try:
            repo.versions.get(v)
        except CorruptVersion as e:
            raise fail(f"the stored version file is damaged: {e}") from None
    recent[v] = new_state
    return new_state
