"""The local swarm behind the multi-process tests' ``swarm`` fixtures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from potluck.localswarm import LocalSwarm


@contextlib.contextmanager
def connected_swarm(
    root: Path,
    nodes: int,
    *,
    manifest: Path | None = None,
    record_ttl: float = 6.0,
    extra_args: Sequence[str] = (),
) -> Iterator[LocalSwarm]:
    """``nodes`` nodes on 127.0.0.1, each seeing the others, serving the run at ``manifest`` (if given);
    every one of them (and what it started) is killed on the way out."""
    args = [*(["--manifest", str(manifest)] if manifest is not None else []), *extra_args]
    with LocalSwarm(root, record_ttl=record_ttl, extra_args=args) as swarm:
        yield swarm.connected(nodes)
