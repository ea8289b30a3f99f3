"""`potluck export --to DIR`: a version as a plain folder the ecosystem reads.

DIR holds ``model.safetensors`` (the version's tensors), ``config.json`` (the task's ``hf_config()`` when
it has one, e.g. the lm task's GPT-2 config that ``transformers`` loads; otherwise the run's task and
task arguments) and ``README.md``, a model card generated from the history: the run and its rules,
lineage, the contributors (updates and rounds merged, weight), and every round up to the version with
its updates and held-out score. The folder is written beside DIR and renamed into place, so it is
whole or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from potluck.errors import ConfigError
from potluck.manifest import Manifest
from potluck.store.versions import atomic_save
from potluck.tasks import TaskError, get_task, metric
from potluck.vcs.repo import HistoryRepo

__all__ = ["export_folder", "model_card", "task_config"]


def task_config(manifest: Manifest) -> dict[str, Any]:
    """The task's ``hf_config()`` (lm: GPT-2's config.json), else the run's task name and arguments."""
    try:
        task = get_task(manifest.task, manifest.task_args)
    except TaskError:
        task = None
    if task is not None and callable(getattr(task, "hf_config", None)):
        return task.hf_config()
    return {"potluck_task": manifest.task, "task_args": dict(manifest.task_args)}


def _contributors(repo: HistoryRepo, rounds: list[dict]) -> list[dict[str, Any]]:
    updates: Counter[str] = Counter()
    weight: Counter[str] = Counter()
    in_rounds: Counter[str] = Counter()
    for e in rounds:
        for node in e["contributors"]:
            in_rounds[node] += 1
        for mu in repo.merged_updates(repo.commit(e["round"])):
            if mu.author is not None:
                updates[mu.author] += 1
                weight[mu.author] += mu.weight or 0
    return [
        {"node": n, "rounds": in_rounds[n], "updates": updates[n], "weight": weight[n]}
        for n in sorted(in_rounds, key=lambda n: (-weight[n], -in_rounds[n], n))
    ]


def model_card(repo: HistoryRepo, version: str) -> str:
    """The README.md of an export of ``version`` (a committed version or the genesis)."""
    m = repo.need_manifest()
    upto = repo.round_of(version)
    rounds = [e for e in repo.log if upto is not None and e["round"] <= upto]
    try:
        name, higher = metric(get_task(m.task, m.task_args))
    except TaskError:
        name, higher = "score", True
    lines = [
        f"# potluck run {m.run_id[:16]}: version {version[:16]}",
        "",
        f"Trained with potluck by {len({c for e in rounds for c in e['contributors']})} contributors over "
        f"{len(rounds)} committed rounds. Task `{m.task}`"
        + (f" ({', '.join(f'{k}={v}' for k, v in sorted(m.task_args.items()))})" if m.task_args else "")
        + f"; merge `{m.strategy}`, outer_lr {m.outer_lr}, quorum {m.quorum}.",
        "",
        "| | |", "|---|---|",
        f"| run id | `{m.run_id}` |", f"| version | `{version}` |",
        f"| round | {upto if upto is not None else 'genesis'} |", f"| genesis | `{m.genesis}` |",
        f"| creator | `{m.creator}` |",
    ]  # fmt: skip
    if m.parent_run:
        lines.append(f"| forked from | run `{m.parent_run}` at version `{m.parent_version}` |")
    lines += ["", "## Contributors", "", "| node | rounds | updates | merge weight |", "|---|---|---|---|"]
    lines += [
        f"| `{c['node'][:16]}` | {c['rounds']} | {c['updates']} | {c['weight']} |"
        for c in _contributors(repo, rounds)
    ]
    better = "higher" if higher else "lower"
    lines += ["", "## Rounds", "", f"Held-out {name} ({better} is better) as this node measured it.", ""]
    lines += [f"| round | version | updates | contributors | {name} |", "|---|---|---|---|---|"]
    for e in rounds:
        score = "-" if e["accuracy"] is None or e["accuracy"] < 0 else f"{e['accuracy']:.4g}"
        lines.append(
            f"| {e['round']} | `{e['version'][:16]}` | {e['updates']} | {len(e['contributors'])} | {score} |"
        )
    lines += ["", "Check this history with `potluck verify`; see who moved what with `potluck blame`.", ""]
    return "\n".join(lines)


def export_folder(repo: HistoryRepo, version: str, folder: Path) -> None:
    """Write ``folder`` (which must not exist, or be empty) for ``version``; nothing is left half-written."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"{folder} exists and is not an empty folder: nothing written")
    if not folder.parent.is_dir():
        raise ConfigError(f"folder {str(folder.parent)!r} does not exist (create it first)")
    state = repo.state(version)
    card = model_card(repo, version)
    config = task_config(repo.need_manifest())
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        atomic_save(state, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "README.md").write_text(card)
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"cannot write {folder}: {e.strerror}") from None
