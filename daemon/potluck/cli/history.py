"""`potluck log`, `export` and `generate`: the committed versions a node keeps in its data dir (no node
needed). The run's task (for the score's name, and the model that generates) comes from the manifest
the node keeps there (potluck.runfiles.manifest_cache) or from ``--manifest``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from potluck.cli.common import (
    Commands,
    data_dir_arg,
    non_negative_int,
    output_file,
    positive_float,
    positive_int,
    run_metric,
)
from potluck.cli.format import format_log
from potluck.errors import ConfigError


def add_parsers(commands: Commands) -> None:
    log = commands.add_parser(
        "log",
        help="the committed versions of this node's run (reads <data-dir>)",
        description="List the versions this node committed, oldest first (no running node needed).",
    )
    log.set_defaults(handler=cmd_log)
    data_dir_arg(log)
    log.add_argument("--json", action="store_true", help="print JSON")
    log.add_argument(
        "--parent-data-dir",
        type=Path,
        action="append",
        metavar="DIR",
        help="for a forked run: a data dir holding the parent run's history, listed up to the fork first; "
        "repeat it for each further ancestor (a fork of a fork)",
    )

    export = commands.add_parser(
        "export",
        help="write a committed version to a safetensors file, or a folder with config and model card",
        description="Write a version this node committed (default: the latest) to a safetensors file (-o), "
        "or to a new folder (--to) of model.safetensors, the task's config.json and a README.md model card "
        "generated from the history (contributors, rounds, scores, lineage).",
    )
    export.set_defaults(handler=cmd_export)
    data_dir_arg(export)
    _which_version(export, "version hash")
    where = export.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "-o", "--output", type=output_file, metavar="MODEL.safetensors", help="the file to write"
    )
    where.add_argument("--to", type=Path, metavar="DIR", help="a new (or empty) folder to write")

    gen = commands.add_parser(
        "generate",
        help="sample text from a version of this node's run (a run of the lm task; reads <data-dir>)",
        description="Sample bytes after --prompt from a version this node committed (default: the latest); "
        "the same bytes for the same version, prompt and --seed.",
    )
    gen.set_defaults(handler=cmd_generate)
    data_dir_arg(gen)
    gen.add_argument("--prompt", required=True, help="the text to continue (UTF-8)")
    _which_version(gen, "a committed version's or the genesis' hash")
    gen.add_argument(
        "--max-bytes",
        type=positive_int,
        default=200,
        help=f"bytes to sample (default 200, at most {MAX_BYTES})",
    )
    gen.add_argument(
        "--temperature", type=positive_float, default=0.8, help="sampling temperature (default 0.8)"
    )
    gen.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default 0)")
    gen.add_argument(
        "--manifest", type=Path, metavar="RUN.toml", help="the run's manifest (default: the node's copy)"
    )
    gen.add_argument("--json", action="store_true", help="print JSON")
    mods = gen.add_mutually_exclusive_group()
    mods.add_argument(
        "--modules", metavar="NAME,...", help="merge these kept modules into the version (their mean delta)"
    )
    mods.add_argument("--route", action="store_true", help="route every kept module per token (top-k gates)")
    gen.add_argument(
        "--top-k", type=positive_int, default=1, help="modules per token with --route (default 1)"
    )
    gen.add_argument(
        "--prefix-scores", action="store_true", help="with --route: gate scores averaged over each prefix"
    )


def _which_version(parser: argparse.ArgumentParser, what: str) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--version",
        metavar="HASH",
        type=_version_prefix,
        help=f"{what}, or an unambiguous prefix of at least {MIN_PREFIX} hex digits",
    )
    which.add_argument("--round", type=non_negative_int, help="the version committed in this round")


MIN_PREFIX = 6  # hex digits: shorter, `--version 0` would silently pick whichever hash starts with 0
MAX_BYTES = 1 << 16


def _version_prefix(text: str) -> str:
    if len(text) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in text):
        raise argparse.ArgumentTypeError(
            f"expected at least {MIN_PREFIX} lowercase hex digits of a version hash, got {text!r}"
            " (a round number: --round N)"
        )
    return text


def _open_history(data_dir: Path):
    from potluck.node import HISTORY_FILE
    from potluck.store.history import History

    path = data_dir.expanduser() / HISTORY_FILE
    if not path.exists():
        raise ConfigError(f"no history in {data_dir}: this node has not taken part in a run")
    return History(path, readonly=True)


def _read_history(data_dir: Path) -> tuple[list[dict], str | None]:
    """The node's committed versions (oldest first), each with the update ids its reverts took out, and
    the run id they belong to (None: none yet)."""
    from potluck.vcs.repo import HistoryRepo
    from potluck.vcs.revert import reverted_by_round

    with _open_history(data_dir) as history:
        latest = history.latest()
        entries, run_id = history.log(), (latest.run_id if latest is not None else None)
    if entries:
        with HistoryRepo(data_dir) as repo:
            by_round = reverted_by_round(repo)
        entries = [e | {"reverts": by_round.get(e["round"], [])} for e in entries]
    return entries, run_id


def _run_manifest(data_dir: Path, run_id: str | None, given: Path | None = None):
    """The run's manifest: ``given`` (--manifest), else the node's copy for ``run_id``, else None."""
    from potluck.manifest import ManifestError
    from potluck.runfiles import cached_manifest, load_manifest

    if given is not None:
        try:
            return load_manifest(given)
        except ManifestError as e:
            raise ConfigError(str(e)) from None
    return cached_manifest(data_dir.expanduser(), run_id) if run_id is not None else None


def cmd_log(args: argparse.Namespace) -> int:
    entries, run_id = _read_history(args.data_dir)
    manifest = _run_manifest(args.data_dir, run_id)
    forked = manifest is not None and bool(manifest.parent_run)
    lines: list[str] = []
    if args.parent_data_dir:
        if not forked:
            raise ConfigError(f"{args.data_dir} holds no forked run: --parent-data-dir has no parent to show")
        ancestors, lines = _lineage(args.parent_data_dir, manifest)
        entries = ancestors + [e | {"run_id": run_id} for e in entries]
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    text = format_log(entries, run_metric(args.data_dir, run_id)[0].upper())
    if forked:
        if not lines:
            lines = [f"{_forked(manifest)} (its history: --parent-data-dir DIR)"]
        text = "\n".join([*lines, text])
    print(text)
    return 0


def _forked(manifest: Any) -> str:
    parent, at = manifest.parent_run[:16], manifest.parent_version[:16]
    return f"run {manifest.run_id[:16]} forked from run {parent} at version {at}"


def _lineage(parent_dirs: list[Path], manifest: Any) -> tuple[list[dict], list[str]]:
    """The ancestors' committed versions, oldest first, each run's up to the version its child forked
    (with run ids), following the lineage through the runs ``parent_dirs`` hold; and a line per fork."""
    held: dict[str | None, tuple[Path, list[dict]]] = {}
    for d in parent_dirs:
        entries, run = _read_history(d)
        held[run] = (d, entries)
    out: list[dict] = []
    lines: list[str] = []
    child = manifest
    while child is not None and child.parent_run:
        lines.append(_forked(child))
        if child.parent_run not in held:
            if child is manifest:
                where = ", ".join(str(d) for d in parent_dirs)
                raise ConfigError(
                    f"{where}: no --parent-data-dir holds the parent run {child.parent_run[:16]}"
                )
            lines[-1] += " (its history: one more --parent-data-dir)"
            break
        parent_dir, parent_entries = held.pop(child.parent_run)
        parent = _run_manifest(parent_dir, child.parent_run)
        rounds = [e["round"] for e in parent_entries if e["version"] == child.parent_version]
        if rounds:
            out = [e | {"run_id": child.parent_run} for e in parent_entries if e["round"] <= rounds[0]] + out
        elif parent is None or parent.genesis != child.parent_version:  # not forked from its genesis
            raise ConfigError(f"{parent_dir} holds no commit of version {child.parent_version[:16]}")
        child = parent
    if held:  # a dir that holds no run of the lineage: a mistake, not silently ignored
        d, _ = next(iter(held.values()))
        run = next(iter(held))
        raise ConfigError(f"{d} holds run {str(run)[:16]}, which is not in this run's lineage")
    return out, lines


def _pick(entries: list[dict], version: str | None, round_: int | None, genesis: str | None = None) -> str:
    """The version hash that --version (a prefix) or --round names; default: the latest committed one.
    ``genesis`` (when known) may be named too."""
    if round_ is not None:
        matches = [e["version"] for e in entries if e["round"] == round_]
        if not matches:
            raise ConfigError(f"--round {round_}: no version committed in that round (see potluck log)")
        return matches[0]
    if version is None:
        if not entries:
            raise ConfigError("no committed version yet")
        return entries[-1]["version"]
    known = {e["version"] for e in entries} | ({genesis} if genesis else set())
    matches = sorted(v for v in known if v.startswith(version))
    if len(matches) != 1:
        what = "committed versions" + (" or the genesis" if genesis else "")
        raise ConfigError(f"--version {version!r} matches {len(matches)} {what} (see potluck log)")
    return matches[0]


def _load_version(args: argparse.Namespace, version: str):
    """A stored version's state; exit 1 with one line when the file is missing or damaged."""
    from potluck.store.versions import CorruptVersion, VersionNotFound, VersionStore

    try:
        return VersionStore(args.data_dir.expanduser() / "versions").get(version)
    except (VersionNotFound, CorruptVersion) as e:
        print(f"potluck {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_export(args: argparse.Namespace) -> int:
    from potluck.store.versions import atomic_save

    entries, _ = _read_history(args.data_dir)
    version = _pick(entries, args.version, args.round)
    round_ = next(e["round"] for e in entries if e["version"] == version)
    if args.to is not None:
        from potluck.vcs.export import export_folder
        from potluck.vcs.repo import HistoryRepo

        with HistoryRepo(args.data_dir) as repo:
            export_folder(repo, version, args.to)
        print(
            f"wrote {args.to}/: model.safetensors, config.json, README.md: version {version} (round {round_})"
        )
        return 0
    state = _load_version(args, version)
    try:
        atomic_save(state, args.output)
    except OSError as e:
        raise ConfigError(f"cannot write {args.output}: {e.strerror}") from None
    print(f"wrote {args.output}: version {version} (round {round_})")
    return 0


def run_task_state(args: argparse.Namespace, what: str = "generate text", load: bool = True):
    """``(manifest, task, version, state, entries)`` of the lm-like run in ``args.data_dir``: the version
    --version/--round names (default: the latest committed; both None unless ``load``); ConfigError in
    one line otherwise."""
    from potluck.tasks import TaskError, get_task

    entries, run_id = _read_history(args.data_dir)
    manifest = _run_manifest(args.data_dir, run_id, args.manifest)
    if manifest is None:
        raise ConfigError(
            f"no committed version and no manifest in {args.data_dir}: pass --manifest RUN.toml"
            if not entries
            else f"{args.data_dir} keeps no copy of its run's manifest: pass --manifest RUN.toml"
        )
    if run_id is not None and manifest.run_id != run_id:
        raise ConfigError(
            f"--manifest is run {manifest.run_id[:16]}; this node's history is of run {run_id[:16]}"
        )
    try:
        task = get_task(manifest.task, manifest.task_args)
    except TaskError as e:
        raise ConfigError(f"the run's task: {e}") from None
    if not callable(getattr(task, "generate", None)):
        raise ConfigError(f"run {manifest.run_id[:16]}'s task {manifest.task!r} does not {what} (lm does)")
    if not load:
        return manifest, task, None, None, entries
    version = _pick(entries, args.version, args.round, manifest.genesis)
    return manifest, task, version, _load_version(args, version), entries


def cmd_generate(args: argparse.Namespace) -> int:
    from potluck.tasks import TaskError

    if args.max_bytes > MAX_BYTES:
        raise ConfigError(f"--max-bytes {args.max_bytes}: at most {MAX_BYTES}")
    manifest, task, version, state, entries = run_task_state(args)
    forward = None
    if args.modules or args.route:
        from potluck.cli.modules import with_modules

        state, forward = with_modules(args, manifest, task, state)
    prompt = args.prompt.encode("utf-8", "surrogateescape")
    try:
        out = task.generate(
            state, prompt, args.max_bytes, seed=args.seed, temperature=args.temperature, forward=forward
        )
    except TaskError as e:  # a stored state that is not the task's model
        raise ConfigError(f"version {version[:16]}: {e}") from None
    text = out.decode("utf-8", "replace")
    round_ = next((e["round"] for e in entries if e["version"] == version), None)
    if args.json:
        print(json.dumps({
            "run_id": manifest.run_id, "version": version, "round": round_, "prompt": args.prompt,
            "text": text, "max_bytes": args.max_bytes, "temperature": args.temperature, "seed": args.seed,
            "modules": args.modules.split(",") if args.modules else None,
            "route": {"top_k": args.top_k, "prefix_scores": args.prefix_scores} if args.route else None,
        }))  # fmt: skip
    else:
        print(args.prompt + text)
    return 0
