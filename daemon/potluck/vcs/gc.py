"""`potluck gc`: drop committed versions a node no longer needs from its version store.

Kept: the genesis (the replay of `verify` starts there), the versions of the last ``keep_last``
committed rounds (at least N + 1 in a run whose strategy merges with the steps of the last N commits:
its next round needs them, merge/context.py), those of every round divisible by ``keep_every`` (0:
none), and any stored version the history does not name (not ours to judge). A kept version stored as a
patch whose parent goes is first rewritten whole (materialised and checked against its hash), then the
others are deleted: a crash in between leaves extra files, never a broken chain. The history, the
signatures and the held updates stay, so `verify` still replays every round, and `show`/`diff`/`blame`
of a dropped version say it is not stored.
"""

from __future__ import annotations

from typing import Any

from potluck.datadir import DataDirLock
from potluck.errors import ConfigError
from potluck.vcs.repo import HistoryRepo, run_merge_of

__all__ = ["collect"]


def collect(repo: HistoryRepo, keep_last: int, keep_every: int, dry_run: bool) -> dict[str, Any]:
    """Plan (and unless ``dry_run``, do) the collection; a report of what is kept, dropped, rewritten."""
    store = repo.versions
    stored = {v: (kind, size) for v, kind, size in store.stored()}
    committed = {e["version"]: e["round"] for e in repo.log}
    rounds = sorted({e["round"] for e in repo.log})
    history = _history_rounds(repo)
    keep_last = max(keep_last, history + 1) if history else keep_last
    keep_rounds = set(rounds[-keep_last:] if keep_last else []) | {
        r for r in rounds if keep_every and r % keep_every == 0
    }
    keep = {v for v in stored if v not in committed or committed[v] in keep_rounds}
    keep |= {repo.genesis} if repo.genesis else set()
    drop = sorted((v for v in stored if v not in keep), key=lambda v: committed[v])
    rewrite = sorted((v for v in keep & set(stored) if store.is_patch(v) and store.parent(v) not in keep),
                     key=lambda v: committed.get(v, -1))  # fmt: skip
    report = {
        "dry_run": dry_run, "kept": len(keep & set(stored)), "rewritten_whole": rewrite,
        "kept_for_history": history + 1 if history else 0,
        "dropped": [{"version": v, "round": committed[v], "kind": stored[v][0], "bytes": stored[v][1]}
                    for v in drop],
        "bytes_before": sum(size for _, size in stored.values()),
    }  # fmt: skip
    if not dry_run:
        lock = DataDirLock(repo.data_dir)
        lock.acquire()  # ConfigError while a node runs on this data dir
        try:
            for v in rewrite:
                store.make_whole(v)
            for v in drop:
                store.delete(v)
        finally:
            lock.release()
        report["bytes_after"] = sum(size for _, _, size in store.stored())
    return report


def _history_rounds(repo: HistoryRepo) -> int:
    """How many earlier commits' steps the run's strategy merges with (0 without a manifest here)."""
    try:
        return run_merge_of(repo.need_manifest()).history
    except ConfigError:  # RepoError too
        return 0
