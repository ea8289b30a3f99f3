"""`potluck demo`: a whole run on this machine, as real processes on 127.0.0.1.

A keeper creates the run (a signed manifest for the built-in digits task) and serves it; N
contributors join it by run id (fetching a pre-trained genesis from the keeper), each training on its
own non-IID shard (of the digits by default; ``--task lm``: of the text corpus, by domain); every
round the table shows the agreed version, who contributed, the merged model's held-out score under
the task's metric name (accuracy; the lm task's bits per byte, lower is better) and the bytes
contributors sent. A task that can ``generate`` (lm) ends with a sample from the last version. The
genesis is the task's seeded init, a given state (``--genesis``) or one pre-trained here first
(``--pretrain-steps``): contributors then patch a model that already knows something. Everything
started is stopped at the end.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from potluck.localswarm import LocalNode, LocalSwarm
from potluck.runfiles import write_run
from potluck.tasks import State, TaskError, check_genesis, get_task, is_trainable, metric, pretrain

# round 0 opens once every process had time to start and find the others (a contributor that comes
# later joins from the next round); under "ready" pacing each round then closes as soon as every
# contributor's update is in, so the rounds themselves take about a second each
STARTUP_S = 15.0
SAMPLE_PROMPT, SAMPLE_BYTES = b"And ", 120


def run_demo(
    *, contributors: int, rounds: int, round_seconds: float, task: str, local_steps: int, density: float,
    as_json: bool, genesis: State | None = None, pretrain_steps: int | None = None,
) -> int:  # fmt: skip
    say = (
        (lambda *a: print(*a, file=sys.stderr, flush=True)) if as_json else (lambda *a: print(*a, flush=True))
    )
    the_task = get_task(task)  # a bad task name fails here, before anything is made
    if genesis is not None:
        check_genesis(the_task, genesis)  # before anything is made too
    elif pretrain_steps is not None:
        if not is_trainable(the_task):
            raise TaskError(f"task {task!r} cannot be pre-trained")
        started = time.monotonic()
        say(f"pre-training the genesis: {pretrain_steps} steps on all of {task}'s training data ...")
        genesis = pretrain(the_task, steps=pretrain_steps)
        say(f"pre-trained in {time.monotonic() - started:.0f}s")
    root = Path(tempfile.mkdtemp(prefix="potluck-demo-"))
    run = write_run(
        root / "run.toml", task, round_seconds=round_seconds, start_time=time.time() + STARTUP_S,
        density=density, values="int8", genesis_state=genesis, pacing="ready",
    )  # fmt: skip
    manifest, manifest_path = run.manifest, run.path
    name = metric(the_task)[0]
    genesis_score = the_task.evaluate(run.state)
    say(f"run {manifest.run_id[:16]}: task {task}, {contributors} contributors, {rounds} rounds")
    say(f"genesis {name} {genesis_score:.3f}; starting processes in {root} ...")

    rows: list[dict[str, Any]] = []
    with LocalSwarm.for_run(root, manifest.run_id, manifest_path, record_ttl=10.0) as swarm:
        keeper = swarm.add_node(name="keeper").wait_ready()
        for i in range(contributors):
            swarm.add_contributor(
                f"contributor{i}", "--shard", f"{i}/{contributors}", "--local-steps", str(local_steps),
                "--seed", str(i), "--rounds", str(rounds),
            )  # fmt: skip
        for node in swarm.nodes:
            node.wait_ready()
        wait = max(0.0, manifest.start_time - time.time())
        say(f"{len(swarm.nodes)} nodes up; round 0 starts in {wait:.0f}s")
        if not as_json:
            print(
                f"{'ROUND':>5}  {'VERSION':<14}{'AGREE':>7}  {'CONTRIB':>7}  {name.upper():>8}  {'SENT':>10}"
            )
        seen_round = -1
        deadline = manifest.start_time + (rounds + 3) * round_seconds
        while len(rows) < rounds and time.time() < deadline:
            time.sleep(0.5)
            log = keeper_log(keeper)
            for entry in log:
                if entry["round"] <= seen_round:
                    continue
                score = _wait_accuracy(keeper, entry["round"])
                row = {
                    "round": entry["round"],
                    "version": entry["version"],
                    "nodes_agreeing": _agreeing(swarm.nodes, entry["version"]),
                    "nodes": len(swarm.nodes),
                    "contributors": len(entry["contributors"]),
                    name: score,
                    "bytes_sent": _bytes_sent(keeper, entry["round"]),
                }
                rows.append(row)
                seen_round = entry["round"]
                if not as_json:
                    shown = "-" if score is None else f"{score:.3f}"
                    agree = f"{row['nodes_agreeing']}/{row['nodes']}"
                    version = row["version"][:12]
                    n, sent = row["contributors"], row["bytes_sent"]
                    print(f"{row['round']:>5}  {version:<14}{agree:>7}  {n:>7}  {shown:>8}  {sent:>10}")
        sample = _sample(the_task, keeper, rows[-1]["version"]) if rows else None
        codes = swarm.stop()
    complete = len(rows) == rounds
    if complete:
        shutil.rmtree(root, ignore_errors=True)
    else:
        say(f"only {len(rows)} of {rounds} rounds committed; node logs kept in {root}/*/node.log")
    final = rows[-1][name] if rows else None
    summary = {"rounds": rows, f"genesis_{name}": genesis_score, f"final_{name}": final}
    if sample is not None:
        summary["sample"] = sample
    if as_json:
        print(json.dumps(summary))
    else:
        sent = sum(r["bytes_sent"] for r in rows)
        print(f"{name} {genesis_score:.3f} -> {final or 0:.3f} in {len(rows)} rounds; {sent} bytes sent")
        if sample is not None:
            print(f"a sample from the last version: {sample!r}")
        print("stopped everything" + ("" if all(c == 0 for c in codes) else f" (exit codes {codes})"))
    return 0 if complete else 1


def keeper_log(node: LocalNode) -> list[dict[str, Any]]:
    from potluck.node import HISTORY_FILE
    from potluck.store.history import History

    path = node.data_dir / HISTORY_FILE
    if not path.exists():
        return []
    with History(path, readonly=True) as history:
        return history.log()


def _sample(task: Any, keeper: LocalNode, version: str) -> str | None:
    """What the keeper's ``version`` writes after ``SAMPLE_PROMPT`` (only tasks that can ``generate``)."""
    if not hasattr(task, "generate"):
        return None
    from potluck.store.versions import VersionStore

    state = VersionStore(keeper.data_dir / "versions").get(version)
    return task.generate(state, SAMPLE_PROMPT, SAMPLE_BYTES).decode("utf-8", "replace")


def _wait_accuracy(node: LocalNode, round_: int, timeout: float = 10.0) -> float | None:
    """The keeper scores each version right after committing it: give it a moment."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        entry = next((e for e in keeper_log(node) if e["round"] == round_), None)
        if entry is not None and entry["accuracy"] is not None:
            return entry["accuracy"]
        time.sleep(0.2)
    return None


def _agreeing(nodes: list[LocalNode], version: str, timeout: float = 3.0) -> int:
    """How many nodes hold ``version`` (each commits when it has the quorum's signatures: allow a moment)."""
    end = time.monotonic() + timeout
    while True:
        count = sum(_at_version(n, version) for n in nodes)
        if count == len(nodes) or time.monotonic() > end:
            return count
        time.sleep(0.2)


def _at_version(node: LocalNode, version: str) -> bool:
    """Whether ``node`` committed ``version`` (its history says so even after it left)."""
    from potluck.node import HISTORY_FILE
    from potluck.store.history import History

    path = node.data_dir / HISTORY_FILE
    if not path.exists():
        return False
    try:
        with History(path, readonly=True) as history:
            return history.has_version(version)
    except Exception:  # being created right now
        return False


def _bytes_sent(node: LocalNode, round_: int) -> int:
    return sum(u["size"] for u in node.updates() if u["round"] == round_)
