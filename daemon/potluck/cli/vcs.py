"""`potluck show`, `diff`, `blame`, `verify` and `gc`: version control over the versions a node keeps in its
data dir (no node needed; only gc writes, and not while a node runs). A VERSION is at least 6 hex digits of
a version hash, rN (the version committed in round N), genesis or latest."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from potluck.cli.common import Commands, data_dir_arg, non_negative_int, positive_int, run_metric
from potluck.cli.format import _table
from potluck.errors import ConfigError

VERSION_HELP = "a version: 6+ hex digits of its hash, rN (round N's version), genesis or latest"


# name -> (summary, description) of each command
_TEXTS = {
    "show": (
        "one committed version: its round, parent, merged updates, signatures",
        "Describe a version this node holds: round, parent, strategy, the updates merged with their authors "
        "and weights, the commit's signatures and quorum, the evaluation.",
    ),
    "diff": (
        "per tensor, how version B differs from version A",
        "Per tensor: entries changed, L2 of the change B - A, its size relative to A, and its cosine with "
        "the change that made A (A minus A's parent).",
    ),
    "blame": (
        "how much each contributor moved each tensor over a range of history",
        "From the stored signed updates and the weights the merge gave them (robust strategies: each "
        "update's term of the merged delta, docs/history.md): per tensor, each author's movement (L2), "
        "the entries it moved, and its share of the tensor's total movement (<m_author, M> / |M|^2; "
        "shares add up to 1). Rounds after --from up to --to.",
    ),
    "verify": (
        "replay the history: signatures, quorums, updates, every merge",
        "Replay this node's history from the genesis (or --from a stored version): every signature and "
        "quorum, every stored update re-validated, every merge recomputed with the run's strategy and "
        "compared with the committed version hash. Exit 1 at the first divergence.",
    ),
    "gc": (
        "drop committed versions this node no longer needs (not while it runs)",
        "Delete stored versions but the genesis, the last --keep-last rounds' and every --keep-every'th "
        "round's; a kept patch whose parent goes is rewritten whole first. The history and updates stay.",
    ),
}


def add_parsers(commands: Commands) -> None:
    handlers = {"show": cmd_show, "diff": cmd_diff, "blame": cmd_blame, "verify": cmd_verify, "gc": cmd_gc}
    p = {}
    for name, (summary, description) in _TEXTS.items():  # the flags all five share first
        p[name] = commands.add_parser(name, help=summary, description=description)
        p[name].set_defaults(handler=handlers[name])
        data_dir_arg(p[name])
        p[name].add_argument(
            "--manifest", type=Path, metavar="RUN.toml", help="the run's manifest (default: the node's copy)"
        )
        p[name].add_argument("--json", action="store_true", help="print JSON")
    p["show"].add_argument("version", metavar="VERSION", help=VERSION_HELP)
    p["diff"].add_argument("a", metavar="A", help=VERSION_HELP)
    p["diff"].add_argument("b", metavar="B", help=VERSION_HELP)
    for name in ("diff", "blame"):
        p[name].add_argument("--tensor", metavar="GLOB", help="only tensors whose name matches (fnmatch)")
    p["diff"].add_argument(
        "--group",
        metavar="NAME",
        help="only the manifest's parameter group NAME (a rule's pattern, or other)",
    )
    p["blame"].add_argument("--from", dest="start", default="genesis", metavar="V", help="default genesis")
    p["blame"].add_argument("--to", dest="end", default="latest", metavar="V", help="default latest")
    p["verify"].add_argument("--from", dest="start", metavar="V", help="start from this stored version")
    p["gc"].add_argument("--keep-last", type=positive_int, required=True, metavar="N", help="last N rounds")
    p["gc"].add_argument(
        "--keep-every", type=non_negative_int, default=0, metavar="M", help="rounds divisible by M (0: none)"
    )
    p["gc"].add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")


def open_repo(args: argparse.Namespace) -> Any:  # potluck.vcs imported here: the command line stays fast
    from potluck.manifest import ManifestError
    from potluck.runfiles import load_manifest
    from potluck.vcs.repo import HistoryRepo

    manifest = None
    if args.manifest is not None:
        try:
            manifest = load_manifest(args.manifest)
        except ManifestError as e:
            raise ConfigError(str(e)) from None
    return HistoryRepo(args.data_dir, manifest)


def _print(args: argparse.Namespace, value: Any, text: str) -> None:
    print(json.dumps(value, indent=2) if args.json else text)


# ---- show --------------------------------------------------------------------------------------------


def describe(repo: Any, version: str) -> dict[str, Any]:
    """What `show` prints of ``version`` (the genesis, or a committed one)."""
    from potluck.vcs import damping

    m = repo.manifest
    out: dict[str, Any] = {"version": version, "run_id": repo.run_id}
    entry = repo.entry(version)
    if entry is None:
        lineage = {"run_id": m.parent_run, "version": m.parent_version} if m and m.parent_run else None
        return out | {
            "round": None,
            "genesis": True,
            "stored": repo.versions.has(version),
            "lineage": lineage,
        }
    commit = repo.commit(entry["round"])
    updates = repo.merged_updates(commit)
    total = commit.total_weight
    damped = damping.read(repo.data_dir, version)  # the strategy's factors below 1, where it said them
    rows = []
    for u in updates:
        row: dict[str, Any] = {"update_id": u.update_id, "held": u.signed is not None}
        if u.update_id in damped:
            row["damped"] = damped[u.update_id]
        if u.excluded:  # the run's probe rule dropped it (weight 0)
            row["excluded"] = u.excluded
        if u.signed is not None:
            up = u.signed.update
            row |= {
                "author": u.author, "round": up.round, "base": up.base, "sample_count": up.sample_count,
                "weight": u.weight, "share": u.weight / total if u.weight is not None and total else None,
                "entries": sum(len(t.indices) for t in up.tensors), "reverts": list(up.reverts),
            }  # fmt: skip
        else:
            row["error"] = u.error
        rows.append(row)
    signatures = repo.history.signatures(commit.round)
    valid = [s.node_id for s in signatures if s.verify(commit.id)]
    metric = run_metric(repo.data_dir, repo.run_id)[0]
    return out | {
        "round": commit.round, "parent": commit.parent, "commit": commit.id, "genesis": False,
        "strategy": m.strategy if m else None, "strategy_args": dict(m.strategy_args) if m else None,
        "outer_lr": m.outer_lr if m else None, "total_weight": total, "updates": rows,
        "contributors": list(commit.contributors), "participants": list(commit.participants),
        "signatures": [{"node_id": s.node_id, "valid": s.node_id in valid} for s in signatures],
        "quorum": m.quorum if m else None, "quorum_met": (len(valid) >= m.quorum) if m else None,
        "metric": metric, "score": entry["accuracy"], "time": entry["time"],
        "stored": repo.versions.has(version), "probe_record": dict(commit.record),
    }  # fmt: skip


def format_show(d: dict[str, Any]) -> str:
    if d.get("genesis"):
        lineage = d.get("lineage")
        fork = f"\nforked from run {lineage['run_id']} at version {lineage['version']}" if lineage else ""
        return f"version  {d['version']}\ngenesis of run {d['run_id'] or '?'}{fork}"
    quorum = (
        f"{sum(s['valid'] for s in d['signatures'])} valid of {len(d['signatures'])} held,"
        f" quorum {d['quorum']}"
        + (" (met)" if d["quorum_met"] else " (NOT met)" if d["quorum_met"] is False else "")
    )
    args = ", ".join(f"{k}={v}" for k, v in (d["strategy_args"] or {}).items())
    lines = [
        f"version   {d['version']}",
        f"round     {d['round']}",
        f"parent    {d['parent']}",
        f"commit    {d['commit']}",
        f"strategy  {d['strategy'] or '?'}{f' ({args})' if args else ''}, outer_lr {d['outer_lr']}",
        f"weight    {d['total_weight']} in all",
        f"signed    {quorum}",
        f"{d['metric']:<9} {'-' if d['score'] is None else format(d['score'], '.4f')}",
        f"time      {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(d['time']))}",
        "",
    ]
    rows = [
        (u["update_id"][:16], u["author"][:16], str(u["sample_count"]), str(u["weight"]),
         "-" if u["share"] is None else f"{u['share']:.3f}", str(u["entries"]))
        if u["held"] else (u["update_id"][:16], "?", "-", "-", "-", u["error"])
        for u in d["updates"]
    ]  # fmt: skip
    table = _table(("UPDATE", "AUTHOR", "SAMPLES", "WEIGHT", "SHARE", "ENTRIES"), rows)
    undone = [f"\n{u['update_id'][:16]} reverts {', '.join(t[:16] for t in u['reverts'])}"
              for u in d["updates"] if u.get("reverts")]  # fmt: skip
    damped = [f"\n{u['update_id'][:16]} damped x{u['damped']:.3f} by {d['strategy']}"
              for u in d["updates"] if "damped" in u]  # fmt: skip
    excluded = [f"\n{u['update_id'][:16]} excluded by the probe set ({u['excluded']})"
                for u in d["updates"] if "excluded" in u]  # fmt: skip
    text = "\n".join(lines) + (table if rows else "no updates merged") + "".join(undone) + "".join(damped)
    # the run's probe record after this round: an author at or below 0 is judged by the usual cut
    record = [f"\n{a[:16]} probe record {v:+.3f}" + ("" if v > 0 else " (judged by the usual cut)")
              for a, v in sorted(d.get("probe_record", {}).items(), key=lambda kv: kv[1])]  # fmt: skip
    return text + "".join(excluded) + "".join(record)


def cmd_show(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        d = describe(repo, repo.resolve(args.version))
    _print(args, d, format_show(d))
    return 0


# ---- diff --------------------------------------------------------------------------------------------


def cmd_diff(args: argparse.Namespace) -> int:
    from potluck.cli.fetch import locate
    from potluck.groups import GroupRules
    from potluck.vcs.numbers import OTHER_GROUP, diff, group_of, group_summary

    with open_repo(args) as repo:
        rules = repo.manifest.group_rules if repo.manifest is not None else GroupRules()
        known = [r.pattern for r in rules.rules] + [OTHER_GROUP]
        if args.group is not None and args.group not in known:
            raise ConfigError(
                f"--group {args.group!r}: no such parameter group (this run's: {', '.join(known)})"
            )
        a, b = locate(args, repo, args.a), locate(args, repo, args.b)
        parent = a.parent  # not fetched when not stored here: cosine_prev is then None
        previous = repo.state(parent) if parent is not None and repo.versions.has(parent) else None
        try:
            rows = diff(repo.state(a.version), repo.state(b.version), previous, args.tensor)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if args.group is not None:
            rows = [row for row in rows if group_of(rules, row["name"]) == args.group]
        if not rows:
            what = " ".join(f"--{k} {v!r}" for k, v in (("tensor", args.tensor), ("group", args.group)) if v)
            raise ConfigError(f"{what} matches no tensor")
        d = {"a": a.version, "b": b.version, "round_a": a.round, "round_b": b.round, "tensors": rows,
             "groups": group_summary(rows, rules),
             "fetched": [v.version for v in (a, b) if v.fetched]}  # fmt: skip
    _print(args, d, format_diff(d))
    return 0


def _num(x: float | None, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def format_diff(d: dict[str, Any]) -> str:
    rows = [
        (t["name"], "x".join(map(str, t["shape"])) or "scalar", f"{t['changed']}/{t['size']}", _num(t["l2"]),
         _num(t["relative"]), _num(t["cosine_prev"], "+.3f"))
        for t in d["tensors"]
    ]  # fmt: skip
    head = f"A {d['a'][:16]} (round {d['round_a']})  B {d['b'][:16]} (round {d['round_b']})"
    groups = [
        (g["group"], str(g["tensors"]), f"{g['changed']}/{g['size']}", _num(g["l2"]), _num(g["relative"]))
        for g in d["groups"]
    ]
    tensors = _table(("TENSOR", "SHAPE", "CHANGED", "L2", "RELATIVE", "COS PREV"), rows)
    return f"{head}\n{tensors}\n\n" + _table(("GROUP", "TENSORS", "CHANGED", "L2", "RELATIVE"), groups)


# ---- blame -------------------------------------------------------------------------------------------


def cmd_blame(args: argparse.Namespace) -> int:
    from potluck.merge.context import step_between
    from potluck.rounds.fixedpoint import Layout
    from potluck.rounds.merging import round_seed
    from potluck.vcs import revert
    from potluck.vcs.numbers import BlameRound, attributed_steps, blame
    from potluck.vcs.repo import run_merge_of

    with open_repo(args) as repo:
        m = repo.need_manifest()
        how = run_merge_of(m)
        strategy, history = how.merging, how.history  # strategy None: the weighted mean's fixed-point terms
        start, end = repo.resolve(args.start), repo.resolve(args.end)
        lo, hi = repo.round_of(start), repo.round_of(end)
        lo = -1 if lo is None else lo
        if hi is None or hi <= lo:
            raise ConfigError(f"--to {args.end} is not a version committed after --from {args.start}")
        rounds, missing = [], []
        for e in repo.log:
            if lo < e["round"] <= hi:
                commit = repo.commit(e["round"])
                merged = repo.merged_updates(commit)
                missing += [u.update_id for u in merged if u.signed is None]
                held = [(u.author, u.weight, u.signed) for u in merged if u.signed is not None]
                if strategy is not None:  # attributed: merge/attribution.py
                    seed = round_seed(m.run_id, commit.round)
                    step = None
                    if history:  # the merge depended on earlier rounds: project on the stored step
                        step = step_between(repo.state(commit.parent), repo.state(commit.version), m.outer_lr)
                    steps, rule = attributed_steps(strategy, held, seed, m.outer_lr, step)
                    rounds.append(BlameRound(commit.round, commit.total_weight, held, steps=steps, rule=rule))
                    continue
                undone = revert.round_targets(repo, [s for _, _, s in held if s.update.reverts], commit.round)
                reverted = [
                    (t.signed.update.author.hex(), t.weight, t.total_weight, t.signed) for t in undone
                ]
                rounds.append(BlameRound(commit.round, commit.total_weight, held, reverted=reverted))
        layout = Layout.from_state(repo.state(end))
        d = blame(layout, rounds, m.outer_lr, args.tensor) | {"from": start, "to": end, "missing": missing}
        if not d["tensors"]:
            raise ConfigError(f"--tensor {args.tensor!r} matches no tensor")
    _print(args, d, format_blame(d))
    return 0


def format_blame(d: dict[str, Any]) -> str:
    rows = []
    for t in d["tensors"]:
        rows.append((t["name"], "(all)", _num(t["l2"]), "1" if t["authors"] else "-", "", ""))
        rows += [
            (
                "",
                a["author"][:16],
                _num(a["l2"]),
                _num(a["share"], ".3f"),
                str(a["entries"]),
                str(a["updates"]),
            )
            for a in t["authors"]
        ]
        if t["unattributed"] is not None:
            left = t["unattributed"]
            rows.append(("", "(unattributed)", _num(left["l2"]), _num(left["share"], ".3f"), "", ""))
    r = d["rounds"]
    head = f"rounds {r[0]}..{r[-1]} ({len(r)} committed)" if r else "no committed rounds in range"
    warn = f"\n{len(d['missing'])} merged update(s) not held here are not counted" if d["missing"] else ""
    warn += f"\nattributed by: {'; '.join(d['attribution'])}" if d["attribution"] != ["fixed_point"] else ""
    return head + warn + "\n" + _table(("TENSOR", "AUTHOR", "L2", "SHARE", "ENTRIES", "UPDATES"), rows)


# ---- verify ------------------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    from potluck.vcs.replay import verify

    with open_repo(args) as repo:
        start = repo.resolve(args.start) if args.start else None
        report = verify(repo, start)
    if args.json:
        print(json.dumps(report, indent=2))
    elif report["ok"]:
        print(
            f"ok: {report['rounds']} round(s) replayed from {report['from'][:16]} to "
            f"{report['latest'][:16]}: {report['signatures']} signatures, {report['updates']} updates, "
            "every merge bit for bit"
        )
    else:
        where = "the genesis" if report["round"] is None else f"round {report['round']}"
        print(
            f"potluck verify: diverges at {where}, version {report['version'][:16]}: {report['what']}",
            file=sys.stderr,
        )
    return 0 if report["ok"] else 1


# ---- gc ----------------------------------------------------------------------------------------------


def cmd_gc(args: argparse.Namespace) -> int:
    from potluck.vcs.gc import collect

    with open_repo(args) as repo:
        report = collect(repo, args.keep_last, args.keep_every, args.dry_run)
    freed = sum(d["bytes"] for d in report["dropped"])
    verb = "would drop" if args.dry_run else "dropped"
    text = (
        f"{verb} {len(report['dropped'])} version(s), {freed} bytes; kept {report['kept']}"
        + (f", {len(report['rewritten_whole'])} rewritten whole" if report["rewritten_whole"] else "")
        + (
            f" (the last {n} at least: the strategy merges with them)"
            if (n := report["kept_for_history"])
            else ""
        )
        + ("" if args.dry_run else f"; {report['bytes_before']} -> {report['bytes_after']} bytes on disk")
    )
    _print(args, report, text)
    return 0
