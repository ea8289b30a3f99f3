"""Memory of a process tree (a node: its python, DHT child, p2pd, averagers), from /proc/*/smaps_rollup.

RSS counts every resident page each process maps, so pages a forked child shares with its parent count
twice; PSS splits each page among the processes that map it (a tree's PSS is what it adds to the
machine, its shared libraries split with every other process using them); USS is the pages only one
process maps (Private_Clean + Private_Dirty). ANON is Pss_Anon: the process's share of anonymous memory
(heaps, stacks; a forked child's pages still shared with its parent split between them), so a tree's sum
counts each of its pages once and, unlike PSS, does not depend on what else runs on the machine (shared
libraries are file pages).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

FIELDS = {"Rss": "rss", "Pss": "pss", "Private_Clean": "uss", "Private_Dirty": "uss", "Pss_Anon": "anon"}


def parents() -> dict[int, int]:
    """Every process's parent (/proc/*/stat)."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                out[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for child, parent in parents().items():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def comm(pid: int) -> str:
    """The process's name (/proc/PID/comm), "" once it has gone."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def process_memory(pid: int) -> dict[str, int]:
    """``rss``, ``pss``, ``uss``, ``anon`` of one process, bytes (all 0 once it has gone)."""
    out = {"rss": 0, "pss": 0, "uss": 0, "anon": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name = FIELDS.get(line.split(":", 1)[0])
            if name is not None:
                out[name] += int(line.split()[1]) * 1024
    return out


def tree_memory(pid: int) -> dict[str, Any]:
    """``rss``, ``pss``, ``uss``, ``anon`` of ``pid``'s tree summed, bytes, and ``processes``: each one's
    name (/proc/PID/comm) with its own four."""
    total = {"rss": 0, "pss": 0, "uss": 0, "anon": 0}
    processes = []
    for p in tree(pid):
        mem, name = process_memory(p), comm(p)
        if name:
            processes.append({"name": name, **mem})
            for key, value in mem.items():
                total[key] += value
    return {**total, "processes": processes}
