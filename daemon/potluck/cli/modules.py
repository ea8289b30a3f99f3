"""`potluck module publish|add|export` and `potluck modules`: the module library a node keeps in its
data dir (potluck.store.modules; no running node needed), the trunk run with modules
(`potluck generate --modules A,B | --route`), and `potluck join --module`'s options."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from potluck.cli.common import (
    Commands,
    Parser,
    data_dir_arg,
    non_negative_int,
    output_file,
    positive_int,
    read_file,
)
from potluck.cli.history import _which_version, run_task_state
from potluck.errors import ConfigError


def add_parsers(commands: Commands) -> None:
    module = commands.add_parser(
        "module",
        help="train and keep a named module (adapter + routing gate) on this node's run",
        description="Modules: low-rank adapters with a routing gate that the run keeps beside its trunk.",
    )
    sub = module.add_subparsers(dest="module_command", required=True, metavar="ACTION", parser_class=Parser)
    pub = sub.add_parser(
        "publish",
        help="train a module on a shard's text, sign it with this node's key, keep it",
        description="Train an adapter on --shard's text (the trunk frozen), then its gate (that text vs "
        "every domain's training text); sign the module with this node's key and keep it.",
    )
    pub.set_defaults(handler=cmd_publish)
    data_dir_arg(pub)
    pub.add_argument("--name", required=True, help="the module's name ([a-z0-9][a-z0-9_-]{0,63})")
    pub.add_argument("--shard", required=True, help="the training text: an lm shard spec, e.g. poetry")
    pub.add_argument("--description", default="", help="what the module is for (at most 512 characters)")
    pub.add_argument("--steps", type=positive_int, default=100, help="adapter training steps (default 100)")
    pub.add_argument("--gate-steps", type=positive_int, default=200, help="gate training steps (default 200)")
    pub.add_argument("--rank", type=positive_int, default=4, help="adapter rank (default 4)")
    pub.add_argument("--seed", type=non_negative_int, default=0, help="training seed (default 0)")
    pub.add_argument(
        "--manifest", type=Path, metavar="RUN.toml", help="the run's manifest (default: the node's)"
    )
    _which_version(pub, "the trunk: a committed version's or the genesis' hash")
    pub.add_argument("--json", action="store_true", help="print JSON")

    add = sub.add_parser(
        "add",
        help="keep a module record received as a file (checked first)",
        description="Check a signed module record (format, signature, the trunk's shapes, rank limit, "
        "name owner) and keep it.",
    )
    add.set_defaults(handler=cmd_add)
    data_dir_arg(add)
    add.add_argument("file", type=Path, metavar="FILE.module", help="the signed record (module export)")
    add.add_argument(
        "--manifest", type=Path, metavar="RUN.toml", help="the run's manifest (default: the node's)"
    )

    export = sub.add_parser(
        "export",
        help="write a kept module's signed record to a file",
        description="Write the signed record of a kept module to a file (for module add elsewhere).",
    )
    export.set_defaults(handler=cmd_export)
    data_dir_arg(export)
    export.add_argument("name", help="the kept module's name")
    export.add_argument(
        "-o", "--output", type=output_file, required=True, metavar="FILE.module", help="the file to write"
    )

    listing = commands.add_parser(
        "modules",
        help="list the modules this node keeps (reads <data-dir>)",
        description="List the modules this node keeps: name, version, author, rank, tensors, bytes.",
    )
    listing.set_defaults(handler=cmd_list)
    data_dir_arg(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")


def join_args(join: argparse.ArgumentParser) -> None:
    """`potluck join --module NAME` and its options (potluck.contribute_module)."""
    group = join.add_argument_group(
        "module", "train a named module (adapter + routing gate) on --shard's text from the run's current "
        "version and publish it to the run through this node, instead of patches (or before them: --patches)"
    )  # fmt: skip
    group.add_argument("--module", metavar="NAME", help="the module's name ([a-z0-9][a-z0-9_-]{0,63})")
    group.add_argument("--module-rank", type=positive_int, metavar="RANK", help="adapter rank (default 4)")
    group.add_argument("--module-steps", type=positive_int, metavar="N", help="adapter steps (default 100)")
    group.add_argument("--gate-steps", type=positive_int, metavar="N", help="gate steps (default 200)")
    group.add_argument("--module-description", metavar="TEXT", help="what it is for (<= 512 characters)")
    group.add_argument(
        "--patches", action="store_true", help="after publishing the module, contribute patches every round "
        "too (default: only serve the module until stopped)"
    )  # fmt: skip


def module_spec(args: argparse.Namespace):
    """The ModuleSpec `join` asked for (None without --module), or a ConfigError on bad options."""
    from potluck.contribute_module import ModuleSpec
    from potluck.modules.record import MAX_DESCRIPTION, valid_name

    given = [f for f in ("module_rank", "module_steps", "gate_steps", "module_description", "patches")
             if getattr(args, f) not in (None, False)]  # fmt: skip
    if args.module is None:
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} needs --module NAME")
        return None
    if not valid_name(args.module):
        raise ConfigError(f"bad --module name {args.module!r}: use [a-z0-9][a-z0-9_-]{{0,63}}")
    if args.shard is None or args.dirichlet is not None:
        raise ConfigError(
            "--module needs --shard SPEC (the module's own text, e.g. poetry), without --dirichlet"
        )
    if len(args.module_description or "") > MAX_DESCRIPTION:
        raise ConfigError(f"--module-description: at most {MAX_DESCRIPTION} characters")
    if args.client_mode:  # it would keep the module and never announce it
        raise ConfigError("--module needs a node peers can fetch from: drop --client-mode (or publish the "
                          "module on a keeper: potluck module export, then module add there)")  # fmt: skip
    if not args.patches and (args.rounds is not None or args.lowrank is not None):
        raise ConfigError("--rounds and --lowrank are for patches: add --patches to contribute them too")
    return ModuleSpec(
        args.module, args.shard, args.module_steps or 100, args.gate_steps or 200, args.module_rank or 4,
        args.seed, args.module_description or "", args.task,
    )  # fmt: skip


def _store(args: argparse.Namespace):
    from potluck.store.modules import ModuleStore

    return ModuleStore(args.data_dir.expanduser() / "modules")


def _library(args: argparse.Namespace):
    from potluck.modules.record import ModuleRefused

    try:
        return _store(args).library()
    except ModuleRefused as e:
        raise ConfigError(f"a kept module is damaged: {e}") from None


def _keep(args: argparse.Namespace, data: bytes, manifest, task) -> tuple[str, object]:
    from potluck.modules.record import ModuleRefused

    try:
        return _store(args).admit(data, manifest.run_id, task.shapes(), task.d_model, manifest.max_rank)
    except ModuleRefused as e:
        raise ConfigError(f"module refused ({e.reason}): {e.detail or e}") from None


def _describe(m, module_id: str) -> dict:
    from potluck.identity import node_id_of

    return {
        "name": m.name, "version": m.version, "author": node_id_of(m.author), "trunk": m.trunk,
        "description": m.description, "rank": m.max_rank, "tensors": sorted(m.adapters),
        "payload_bytes": m.payload_bytes(), "id": module_id,
    }  # fmt: skip


def cmd_publish(args: argparse.Namespace) -> int:
    from potluck.identity import load_existing
    from potluck.modules.record import Module, ModuleRefused, module_id, sign_module
    from potluck.tasks import TaskError
    from potluck.tasks.lm_modules import train_module

    manifest, task, version, state, _ = run_task_state(args, "take modules")
    identity = load_existing(args.data_dir.expanduser())
    try:  # refuse a taken name before training, not after
        number = _library(args).next_version(args.name, identity.public_key)
    except ModuleRefused as e:
        raise ConfigError(f"module refused ({e.reason}): {e.detail or e}") from None
    try:
        own, general = task.local_data(args.shard), task.local_data(None)
        adapters, gw, gb = train_module(
            task, state, own, general, steps=args.steps, gate_steps=args.gate_steps, seed=args.seed,
            rank=args.rank,
        )  # fmt: skip
    except TaskError as e:
        raise ConfigError(str(e)) from None
    m = Module(manifest.run_id, args.name, identity.public_key, number, version, args.description,
               adapters, gw, gb)  # fmt: skip
    try:
        data = sign_module(identity, m)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    status, m = _keep(args, data, manifest, task)
    info = _describe(m, module_id(data)) | {"status": status, "record_bytes": len(data)}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"module {m.name} v{m.version} {status}: rank {m.max_rank} on {len(m.adapters)} tensors, "
              f"{len(data)} bytes, trunk {m.trunk[:16]}")  # fmt: skip
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from potluck.modules.record import module_id

    manifest, task, _, _, _ = run_task_state(args, "take modules", load=False)
    data = read_file(args.file)
    status, m = _keep(args, data, manifest, task)
    print(f"module {m.name} v{m.version} {status} (id {module_id(data)[:16]})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    kept = _library(args).get(args.name)
    if kept is None:
        raise ConfigError(f"no module named {args.name!r} in {args.data_dir}")
    args.output.write_bytes(_store(args).get(args.name))
    print(f"wrote {args.output}: module {args.name} v{kept.module.version}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    lib = _library(args)
    rows = [_describe(lib.get(n).module, lib.get(n).module_id) for n in lib.names()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no modules")
        return 0
    print(f"{'NAME':<20} {'VER':>3} {'AUTHOR':<18} {'RANK':>4} {'TENSORS':>7} {'BYTES':>8}  DESCRIPTION")
    for r in rows:
        print(f"{r['name']:<20} {r['version']:>3} {r['author'][:16]:<18} {r['rank']:>4} "
              f"{len(r['tensors']):>7} {r['payload_bytes']:>8}  {r['description']}")  # fmt: skip
    return 0


def with_modules(args: argparse.Namespace, manifest, task, state):
    """``(state, forward)`` for `generate --modules` (merged mean; forward None) or `--route`."""
    from potluck.tasks.lm_modules import merged_state, routed_forward

    lib = _library(args)
    try:
        chosen = lib.select(args.modules.split(",") if args.modules else None)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    if not chosen:
        raise ConfigError(f"no modules kept in {args.data_dir} (see potluck modules)")
    for m in chosen:
        if m.run_id != manifest.run_id:
            raise ConfigError(f"module {m.name} is of run {m.run_id[:16]}, not this node's")
    if args.modules:
        return merged_state(state, chosen), None
    if args.top_k > len(chosen):
        raise ConfigError(f"--top-k {args.top_k}: only {len(chosen)} modules are kept")
    print(f"routing {len(chosen)} modules, top-{args.top_k}", file=sys.stderr)
    return state, routed_forward(chosen, task, args.top_k, args.prefix_scores)
