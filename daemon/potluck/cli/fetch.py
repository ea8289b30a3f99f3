"""A version for `potluck diff`: read from the data dir, or, when this node does not store it (dropped by
`gc`, committed before it joined), fetched from the run's peers by the node running on that data dir.

The fetch goes through the running node's control API (FetchVersion, engine/archive.py) rather than a
swarm client of the command's own: the node already holds the data dir's lock (the fetched version is
stored there, so it is fetched once), is connected to the run's peers, and has the history and the DHT's
quorum-signed commits that pin the version before a byte is asked for."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

from potluck.errors import ConfigError

PROGRESS_AFTER_S = 1.0  # a fetch this long or longer shows progress on stderr
PROGRESS_LINE_S = 5.0  # how often when stderr is not a terminal


@dataclass(frozen=True)
class Version:
    """A version for diff: its hash, round (None: the genesis or unknown), parent, and whether it was
    fetched from peers by this command."""

    version: str
    round: int | None
    parent: str | None
    fetched: bool = False


def locate(args: argparse.Namespace, repo: Any, name: str) -> Version:
    """The version ``name`` stands for, stored in ``repo``'s versions once this returns: fetched by the
    running node when it is not (a ``rN`` this history lacks is looked up by the node too)."""
    from potluck.vcs.repo import RepoError

    try:
        version = repo.resolve(name)
    except RepoError as e:
        if not (name[:1] == "r" and name[1:].isdigit()):
            raise
        return _fetch(args, "", int(name[1:]), f"{name} (round {name[1:]}'s version)", str(e))
    known = Version(version, repo.round_of(version), repo.parent_of(version))
    if repo.versions.has(version):
        return known
    round_ = -1 if known.round is None else known.round
    what = f"version {version[:16]}"
    return _fetch(args, version, round_, what, f"{what} is not stored in {repo.data_dir / 'versions'}")


def _fetch(args: argparse.Namespace, version: str, round_: int, what: str, why: str) -> Version:
    """``version`` (or round ``round_``'s), fetched by the running node; ``why`` it is not here."""
    from potluck.rpc.client import ControlClient, NodeUnreachable, resolve_address

    try:
        address = resolve_address(getattr(args, "rpc", None), args.data_dir.expanduser())
    except ConfigError:
        raise ConfigError(
            f"{why}; no node runs on {args.data_dir} to fetch it from the run's peers (start it with "
            "potluck run or join)"
        ) from None
    began, shown, last = time.monotonic(), 0.0, None
    try:
        with ControlClient(address) as client:
            for reply in client.fetch_version(version, round_):
                last = reply
                now = time.monotonic() - began
                if not reply.done and now >= PROGRESS_AFTER_S and now - shown >= _every():
                    shown = now
                    _progress(f"fetching {reply.version[:16]} from peers: {_mb(reply.bytes)} of "
                              f"{_mb(reply.target_bytes)} MB, {now:.0f}s")  # fmt: skip
    except NodeUnreachable as e:
        raise ConfigError(f"{why}; {e}") from None
    if last is None or not last.done:
        raise ConfigError(f"the node at {address} ended the fetch of {what} without a result")
    if last.error:
        raise ConfigError(f"cannot fetch {what}: {last.error}")
    if last.fetched:
        _progress(f"fetched {last.version[:16]} from {last.holders} peer(s): {last.bytes} bytes, checked "
                  "against its commit and stored", end="\n")  # fmt: skip
    return Version(last.version, None if last.round < 0 else last.round, last.parent or None, last.fetched)


def _every() -> float:
    return 0.5 if sys.stderr.isatty() else PROGRESS_LINE_S


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


def _progress(text: str, end: str | None = None) -> None:
    tty = sys.stderr.isatty()
    end = end if end is not None else ("" if tty else "\n")
    print(("\r" if tty else "") + text, end=end, file=sys.stderr, flush=True)
