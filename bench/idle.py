"""Benchmark: what an idle swarm costs on the wire, per node and by kind.

    python bench/idle.py [--keepers 2] [--idle 2] [--seconds 30] [--baseline-tree DIR]

``--keepers`` real `potluck run --manifest` nodes and ``--idle`` more with `--role contributor` (members
that publish nothing) on 127.0.0.1, serving one digits run made with ``write_run`` (round 0 starts
``--start-in`` seconds later, rounds of ``--round-seconds``; nobody publishes an update). Once every
node sees all the others, and ``--settle`` seconds later, each node's GetStatus.traffic is read, the
swarm is left alone for ``--seconds``, and read again: per node, bytes/s sent and received by kind
(potluck.swarm.traffic: the kernel's count on the node's p2pd sockets, potluck's own calls by kind,
``transport`` the rest), and the loopback interface's bytes/s (/sys/class/net/lo/statistics: every
process on the machine, IP and TCP headers included).

With ``--baseline-tree`` (the ``daemon/`` folder of other code) the same measurement runs on that code
first, in the same invocation; its kinds are reported only if that code has the traffic counter.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from report import emit  # bench/report.py: this script's folder is on the path

from potluck.localswarm import LocalSwarm
from potluck.runfiles import write_run

HERE = Path(__file__).resolve().parents[1] / "daemon"
LO = Path("/sys/class/net/lo/statistics")


def log(message: str) -> None:
    print(f"[idle] {message}", file=sys.stderr, flush=True)


def loopback() -> tuple[int, int]:
    try:
        return int((LO / "tx_bytes").read_text()), int((LO / "rx_bytes").read_text())
    except OSError:
        return 0, 0


def rates(before: dict[str, Any], after: dict[str, Any], span: float) -> dict[str, Any]:
    """Per-kind bytes/s between two GetStatus.traffic dicts; ``total`` the kernel's (when read)."""
    out: dict[str, Any] = {"kernel": after["kernel"]}
    names = {**after["kinds"], **({"total": after["total"]} if after.get("total") else {})}
    for name, now in names.items():
        then = before["kinds"].get(name) if name != "total" else before.get("total")
        then = then or {"sent": 0, "recv": 0}
        out[name] = {
            "sent_Bps": round((now["sent"] - then["sent"]) / span, 1),
            "recv_Bps": round((now["recv"] - then["recv"]) / span, 1),
        }
    return out


def run_tree(label: str, tree: Path, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    written = write_run(
        root / f"{label}.toml",
        "digits",
        round_seconds=args.round_seconds,
        start_time=time.time() + args.start_in,
    )
    os.environ["PYTHONPATH"] = str(tree)  # the nodes' code
    with LocalSwarm.for_run(
        root / label, written.manifest.run_id, written.path, record_ttl=args.record_ttl
    ) as swarm:
        swarm.start(args.keepers, timeout=180)
        for _ in range(args.idle):
            swarm.add_node(extra_args=[*swarm.extra_args, "--role", "contributor"])
        for node in swarm.nodes:
            node.wait_ready(180)
        n = len(swarm.nodes)
        started = time.monotonic()
        swarm.wait_all_see(n - 1, timeout=120)
        see_s = time.monotonic() - started
        log(f"{label}: {n} nodes see each other after {see_s:.1f}s; settling {args.settle}s")
        time.sleep(args.settle)
        first = [node.status() for node in swarm.nodes]
        lo0, t0 = loopback(), time.monotonic()
        time.sleep(args.seconds)
        last = [node.status() for node in swarm.nodes]
        lo1, t1 = loopback(), time.monotonic()
        span = t1 - t0
        nodes = []
        for i, (a, b) in enumerate(zip(first, last, strict=True)):
            entry: dict[str, Any] = {"node": i, "role": b["role"], "peers": b["peers"]}
            if "traffic" in b:
                entry["traffic"] = rates(a["traffic"], b["traffic"], span)
            nodes.append(entry)
        per_node = [
            x["traffic"]["total"]["sent_Bps"] + x["traffic"]["total"]["recv_Bps"]
            for x in nodes
            if "total" in x.get("traffic", {})
        ]
        return {
            "nodes_see_each_other_s": round(see_s, 1),
            "measured_s": round(span, 1),
            "loopback_Bps": {
                "tx": round((lo1[0] - lo0[0]) / span, 1),
                "rx": round((lo1[1] - lo0[1]) / span, 1),
            },
            "per_node_total_Bps": {
                "max": max(per_node, default=None),
                "mean": round(sum(per_node) / len(per_node), 1) if per_node else None,
            },
            "nodes": nodes,
        }


def table(label: str, result: dict[str, Any]) -> str:
    lines = [
        f"{label}: loopback {result['loopback_Bps']['tx'] / 1000:.1f} KB/s tx",
        "| node | kind | sent B/s | recv B/s |",
    ]
    lines.append("|---|---|---|---|")
    for node in result["nodes"]:
        for kind, r in node.get("traffic", {}).items():
            if kind != "kernel" and (r["sent_Bps"] or r["recv_Bps"]):
                who = f"{node['node']} ({node['role']})"
                lines.append(f"| {who} | {kind} | {r['sent_Bps']:.0f} | {r['recv_Bps']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keepers", type=int, default=2)
    parser.add_argument(
        "--idle", type=int, default=2, help="nodes with --role contributor that publish nothing"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the measurement")
    parser.add_argument(
        "--settle", type=float, default=15.0, help="seconds between seeing each other and measuring"
    )
    parser.add_argument("--round-seconds", type=float, default=60.0)
    parser.add_argument("--start-in", type=float, default=10.0, help="seconds from creation to round 0")
    parser.add_argument("--record-ttl", type=float, default=30.0, help="the nodes' --record-ttl")
    parser.add_argument("--baseline-tree", type=Path, help="daemon/ of other code, measured first")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    started = time.time()
    trees = {"this": HERE}
    if args.baseline_tree is not None:
        trees = {"baseline": args.baseline_tree.resolve(), **trees}
    results = {}
    with tempfile.TemporaryDirectory(prefix="potluck-bench-idle-") as tmp:
        for label, tree in trees.items():
            log(f"{label} ({tree}): {args.keepers} keepers + {args.idle} idle, {args.seconds:.0f}s")
            results[label] = run_tree(label, tree, args, Path(tmp))
            log(table(label, results[label]))
    emit("idle", args, results, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
