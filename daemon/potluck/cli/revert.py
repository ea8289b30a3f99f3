"""`potluck revert`: check and sign a proposal to take past updates back out of the model (vcs/revert.py).

The proposal names update ids only; every node recomputes the step from its stored updates. It is
written to a file (``-o``) and/or, with ``--publish``, handed to the running node as a revert-kind update
of the round it takes updates for (the run validates it, merges it gathered and lists it in the commit).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from potluck.cli.common import Commands, ask, data_dir_arg, output_file, rpc_args
from potluck.errors import ConfigError

if TYPE_CHECKING:
    from potluck.identity import NodeIdentity


def add_parsers(commands: Commands) -> None:
    p = commands.add_parser(
        "revert",
        help="propose, signed, to take past updates back out of the model",
        description="Check that this node's key may revert in the run and that each update was merged in "
        "its history, then write the signed revert proposal (update ids only: every node recomputes the "
        "step, minus each update's merged contribution, from the stored updates). --publish hands it to "
        "the running node as a revert update of the next round it takes (docs/history.md).",
    )
    p.set_defaults(handler=cmd_revert)
    data_dir_arg(p)
    rpc_args(p)
    p.add_argument("update", nargs="?", metavar="UPDATE_ID", help="the update to revert (64 hex digits)")
    p.add_argument("--author", metavar="KEY", help="revert every merged update by this node id instead")
    p.add_argument("--rounds", metavar="A..B", help="with --author: only rounds A to B (inclusive)")
    p.add_argument(
        "--manifest", type=Path, metavar="RUN.toml", help="the run's manifest (default: the node's copy)"
    )
    p.add_argument("-o", "--output", type=output_file, metavar="FILE", help="write the signed proposal")
    p.add_argument(
        "--publish", action="store_true", help="hand it to the running node (--data-dir/--rpc) for a round"
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def _rounds(text: str | None) -> range | None:
    if text is None:
        return None
    a, sep, b = text.partition("..")
    if not sep or not a.isdigit() or not b.isdigit() or int(b) < int(a):
        raise ConfigError(f"--rounds {text!r}: give A..B, two round numbers with A <= B")
    return range(int(a), int(b) + 1)


def cmd_revert(args: argparse.Namespace) -> int:
    from potluck.cli.vcs import open_repo
    from potluck.identity import load_existing
    from potluck.vcs import revert

    if (args.update is None) == (args.author is None):
        raise ConfigError("give one UPDATE_ID or --author KEY")
    if args.rounds is not None and args.author is None:
        raise ConfigError("--rounds goes with --author")
    if args.output is None and not args.publish:
        raise ConfigError("give -o FILE, --publish or both")
    identity = load_existing(args.data_dir)
    with open_repo(args) as repo:
        run = repo.need_manifest().run_id
        if args.update is not None:
            ids = [args.update.lower()]
        else:
            ids = revert.targets_of_author(repo, args.author.lower(), _rounds(args.rounds))
            if not ids:
                raise ConfigError(
                    f"revert_not_merged: no merged update by {args.author[:16]} in those rounds"
                )
        if not all(revert.is_id(u) for u in ids):
            raise ConfigError(f"revert_unknown_update: {args.update!r} is not an update id (64 hex digits)")
        data = revert.sign(identity, run, ids)
        targets = revert.check(repo, revert.parse(data))
    if args.output is not None:
        args.output.write_bytes(data)
    published = _publish(args, identity, ids) if args.publish else None
    rows = [
        {"update": t.update_id, "round": t.round, "weight": t.weight, "of": t.total_weight} for t in targets
    ]
    if args.json:
        out = {"output": str(args.output) if args.output else None, "published": published, "reverts": rows}
        print(json.dumps(out, indent=2))
    else:
        for r in rows:
            print(f"revert {r['update'][:16]}  round {r['round']}  weight {r['weight']}/{r['of']}")
        n = f"{len(rows)} update{'s' * (len(rows) != 1)}"
        print(f"wrote {args.output} ({n})" if args.output else f"published {published} ({n})")
    return 0


def _publish(args: argparse.Namespace, identity: NodeIdentity, ids: list[str]) -> str:
    """Hand the revert to the running node as a revert-kind update; its id. A node that refuses it:
    ConfigError with its reason (revert_not_allowed, stale_base, ...)."""
    from potluck.cli.update import run_and_round
    from potluck.vcs import revert

    args.run = args.round = None
    run, round_, _ = run_and_round(args)
    version = ask(args, lambda c: c.status())["version"]
    data = revert.as_update(identity, run, round_, version, ids)
    reply = ask(args, lambda c: c.publish(data))
    if not reply["accepted"]:
        raise ConfigError(f"the node refused the revert: {reply['reason']}: {reply['detail']}")
    return reply["update_id"]
