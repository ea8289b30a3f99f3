"""A node's data dir as a repository of versions: its history, version files, held updates, manifest.

A version is named by a hash prefix of at least :data:`MIN_PREFIX` hex digits, ``genesis``, ``latest``
or ``rN`` (the version committed in round N). The weights a commit's merge gave its updates are
recomputed as the round did: ``manifest.update_weight(sample_count)``, or 0 for an author on probation,
seniority counted in the committed history (defence/probation.py; a node whose history has gaps can
under-count, as a late joiner does in a round), or 0 for an update the run's probe rule dropped
(rounds/merging.py ``probe_round``, recomputed from the round's base and updates when all are held).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from potluck.defence import probation
from potluck.errors import ConfigError
from potluck.manifest import Manifest
from potluck.merge import Strategy, StrategyError
from potluck.merge.probe import ProbeError
from potluck.rounds.commit import Commit
from potluck.rounds.merging import RunMerge, probe_round, run_merge
from potluck.runfiles import cached_manifest
from potluck.store.history import HISTORY_FILE, History
from potluck.store.updates import UpdateStore
from potluck.store.versions import CorruptVersion, VersionNotFound, VersionStore
from potluck.tasks.probing import run_probe
from potluck.updates.codec import SignedUpdate, decode_update
from potluck.updates.reasons import UpdateRejected

__all__ = [
    "MIN_PREFIX",
    "HistoryRepo",
    "MergedUpdate",
    "RepoError",
    "merge_strategy",
    "merge_weight",
    "run_merge_of",
]

MIN_PREFIX = 6  # hex digits: shorter, a prefix would silently pick whichever hash starts with it


class RepoError(ConfigError):
    """A version or update this data dir cannot provide (unknown, missing or damaged): one line."""


@dataclass(frozen=True)
class MergedUpdate:
    """One update a commit lists: its id and, when this node holds it, the decoded update and the weight
    the round's merge gave it (0: on probation)."""

    update_id: str
    signed: SignedUpdate | None  # None: not held here
    weight: int | None
    error: str = ""  # why ``signed`` is None when the file is there but does not decode
    excluded: str = ""  # why the run's probe rule dropped it (rounds/merging.py PROBE_REASONS), if it did

    @property
    def author(self) -> str | None:
        return self.signed.update.author.hex() if self.signed is not None else None


def merge_weight(manifest: Manifest, author: str, sample_count: int, seniority: Counter[str]) -> int:
    """The weight a round's merge gave an update of ``author`` (hex) with ``sample_count`` samples, given
    ``seniority`` (author -> committed rounds before that round listing it): 0 while on probation."""
    senior = probation.is_senior(seniority.get(author, 0), manifest.probation_rounds)
    return probation.update_weight(manifest, sample_count, senior)


def run_merge_of(manifest: Manifest) -> RunMerge:
    """How the run's rounds merge, as the engine reads it (rounds/merging.py's ``run_merge``: per-group
    strategies, the history a strategy needs, the probe set the task hands); :class:`RepoError` in one
    line for a strategy this install cannot load or a probe set it cannot give (tasks/probing.py)."""
    try:
        probe = run_probe(manifest)
    except ProbeError as e:
        raise RepoError(str(e)) from None
    try:
        return run_merge(manifest.strategy, manifest.strategy_args, manifest.group_rules, probe)
    except StrategyError as e:
        raise RepoError(f"the run's merge strategy {manifest.strategy!r}: {e}") from None


def merge_strategy(manifest: Manifest) -> Strategy | None:
    """What the run's rounds merge with: None for the weighted mean (its fixed point), else the strategy."""
    return run_merge_of(manifest).merging


class HistoryRepo:
    """``HistoryRepo(data_dir)``: read-only views of a node's committed history; a context manager."""

    def __init__(self, data_dir: Path, manifest: Manifest | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser()
        path = self.data_dir / HISTORY_FILE
        if not path.exists():
            raise ConfigError(f"no history in {data_dir}: this node has not taken part in a run")
        self.history = History(path, readonly=True)
        self.versions = VersionStore(self.data_dir / "versions")
        self.updates = UpdateStore(self.data_dir / "updates")
        self.log: list[dict[str, Any]] = self.history.log()
        latest = self.history.latest()
        self.run_id = latest.run_id if latest is not None else None
        self.manifest = manifest or (cached_manifest(self.data_dir, self.run_id) if self.run_id else None)
        self._by_version = {e["version"]: e for e in self.log}

    def close(self) -> None:
        self.history.close()

    def __enter__(self) -> HistoryRepo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def need_manifest(self) -> Manifest:
        if self.manifest is None:
            raise ConfigError(f"{self.data_dir} keeps no copy of its run's manifest: pass --manifest RUN")
        if self.run_id is not None and self.manifest.run_id != self.run_id:
            raise ConfigError(
                f"--manifest is run {self.manifest.run_id[:16]}; this history is of run {self.run_id[:16]}"
            )
        return self.manifest

    # ---- naming versions ---------------------------------------------------------------------------

    @property
    def genesis(self) -> str | None:
        return self.manifest.genesis if self.manifest is not None else None

    def resolve(self, name: str) -> str:
        """The version hash ``name`` stands for; :class:`RepoError` when it names none (or several)."""
        if name == "latest":
            if not self.log:
                raise RepoError("no committed version yet")
            return self.log[-1]["version"]
        if name == "genesis":
            if self.genesis is None:
                raise RepoError("the genesis is unknown here (no manifest kept): pass --manifest RUN.toml")
            return self.genesis
        if name[:1] == "r" and name[1:].isdigit():
            matches = [e["version"] for e in self.log if e["round"] == int(name[1:])]
            if not matches:
                raise RepoError(f"{name}: no version committed in round {name[1:]} here (see potluck log)")
            return matches[0]
        if len(name) < MIN_PREFIX or name.strip("0123456789abcdef"):
            raise RepoError(
                f"unknown version {name!r}: give at least {MIN_PREFIX} hex digits of a version hash, "
                "rN (round N), genesis or latest"
            )
        known = set(self._by_version) | ({self.genesis} if self.genesis else set())
        matches = sorted(v for v in known if v.startswith(name))
        if len(matches) != 1:
            what = "no" if not matches else f"{len(matches)}"
            raise RepoError(f"unknown version {name!r}: it matches {what} versions held here (potluck log)")
        return matches[0]

    def entry(self, version: str) -> dict[str, Any] | None:
        """The log row of the commit that produced ``version`` (None: the genesis, or not committed)."""
        return self._by_version.get(version)

    def round_of(self, version: str) -> int | None:
        e = self.entry(version)
        return e["round"] if e is not None else None

    def commit(self, round_: int) -> Commit:
        commit = self.history.get(round_)
        if commit is None:
            raise RepoError(f"no commit recorded for round {round_}")
        return commit

    def parent_of(self, version: str) -> str | None:
        e = self.entry(version)
        return e["parent"] if e is not None else None

    def state(self, version: str) -> dict[str, np.ndarray]:
        """A stored version, checked against its hash; :class:`RepoError` when missing or damaged."""
        try:
            return self.versions.get(version)
        except VersionNotFound:
            raise RepoError(f"version {version[:16]} is not stored in {self.data_dir / 'versions'}") from None
        except CorruptVersion as e:
            raise RepoError(f"version {version[:16]} is damaged: {e}") from None

    # ---- the updates of a commit -------------------------------------------------------------------

    def load_update(self, update_id: str) -> tuple[SignedUpdate | None, str]:
        """(the held update decoded and its signature checked, "") or (None, why not)."""
        if not self.updates.has(update_id):
            return None, "not held here"
        try:
            signed = decode_update(self.updates.get(update_id))
        except UpdateRejected as e:
            return None, f"damaged: {e}"
        except OSError as e:
            return None, f"unreadable: {e.strerror}"
        if signed.update_id != update_id:
            return None, f"damaged: its bytes hash to {signed.update_id[:16]}"
        return signed, ""

    def seniority(self, round_: int) -> Counter[str]:
        """author -> committed rounds before ``round_`` that list it (what probation counts)."""
        return probation.contributions(self.log, before=round_)

    def weight(self, signed: SignedUpdate, seniority: Counter[str]) -> int:
        """The merge weight the round gave ``signed`` (0: its author was on probation)."""
        return merge_weight(
            self.need_manifest(), signed.update.author.hex(), signed.update.sample_count, seniority
        )

    def merged_updates(self, commit: Commit) -> list[MergedUpdate]:
        """The updates ``commit`` lists, in id order, with the weights its merge gave them (None without
        a manifest)."""
        seniority = self.seniority(commit.round)
        out = []
        for uid in commit.updates:
            signed, why = self.load_update(uid)
            weight = self.weight(signed, seniority) if signed is not None and self.manifest else None
            out.append(MergedUpdate(uid, signed, weight, why if signed is None else ""))
        if self.manifest is not None and self.manifest.probe and all(u.signed is not None for u in out):
            probe = run_merge_of(self.manifest).probe
            assert probe is not None  # run_merge_of refuses a run whose probe set it cannot give
            weighted = [(u.weight or 0, u.signed) for u in out if u.signed is not None]
            _, dropped = probe_round(self.state(commit.parent), weighted, probe, self.manifest.outer_lr)
            out = [replace(u, weight=0, excluded=dropped[u.update_id].reason) if u.update_id in dropped else u
                   for u in out]  # fmt: skip
        return out
