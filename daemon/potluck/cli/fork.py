"""`potluck fork`: a new run whose genesis is a version of another run, held in this node's data dir.

The new manifest copies the parent run's rules and names its lineage (``parent_run``,
``parent_version``: see potluck.manifest); it is signed with this node's key, like `potluck init`'s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from potluck.cli.common import Commands, data_dir_arg, output_file
from potluck.cli.vcs import VERSION_HELP
from potluck.errors import ConfigError


def add_parsers(commands: Commands) -> None:
    fork = commands.add_parser(
        "fork",
        help="a new run whose genesis is a version of another run (lineage in its signed manifest)",
        description="Write a new run (manifest + genesis weights, signed with this node's key) that starts "
        "from a version this node holds of the run at RUN.toml, with the same rules; its manifest names the "
        "parent run and version, and `potluck log` shows them.",
    )
    fork.set_defaults(handler=cmd_fork)
    data_dir_arg(fork)
    fork.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="RUN.toml[@VERSION]",
        help=f"the parent run and its version (default @latest); {VERSION_HELP}",
    )
    fork.add_argument(
        "-o", "--output", type=output_file, required=True, metavar="NEW.toml", help="the new run's manifest"
    )
    fork.add_argument(
        "--start-in", type=float, default=0.0, metavar="SECONDS", help="round 0 starts this much later"
    )


# rules a fork does not copy: what makes the new run (its genesis, creator, times, lineage, signature)
_NOT_COPIED = ("task", "task_args", "genesis", "creator", "created", "start_time", "signature", "parent_run",
               "parent_version")  # fmt: skip


def cmd_fork(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from potluck.datadir import prepare_data_dir
    from potluck.identity import load_or_create
    from potluck.manifest import Manifest, ManifestError
    from potluck.runfiles import load_manifest, write_run
    from potluck.tasks import TaskError
    from potluck.vcs.repo import HistoryRepo

    path, _, name = args.source.rpartition("@") if "@" in args.source else (args.source, "", "latest")
    try:
        parent = load_manifest(Path(path))
    except ManifestError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    with HistoryRepo(args.data_dir, parent) as repo:
        repo.need_manifest()
        version = repo.resolve(name)
        state = repo.state(version)
        round_ = repo.round_of(version)
    rules = {f.name: getattr(parent, f.name) for f in fields(Manifest) if f.name not in _NOT_COPIED}
    identity = load_or_create(prepare_data_dir(args.data_dir))
    try:
        run = write_run(
            args.output, parent.task, creator=identity, task_args=dict(parent.task_args), genesis_state=state,
            start_time=time.time() + args.start_in, parent_run=parent.run_id, parent_version=version, **rules,
        )  # fmt: skip
    except (TaskError, ManifestError) as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"cannot write {args.output}: {e.strerror}") from None
    where = "its genesis" if round_ is None else f"round {round_}"
    print(
        f"run {run.manifest.run_id}\nwrote {args.output} and {run.genesis_path}: forked from run "
        f"{parent.run_id[:16]} at version {version[:16]} ({where})\n"
        f"every node needs both files: start it with --manifest {args.output}, not --run RUN_ID"
    )
    return 0
