"""Keeping the node's forked children (averagers) light.

hivemind starts its averager processes with fork, so a child shares the parent's heap (torch,
hivemind and potluck imported: ~180 MB) page by page until either side writes to a page.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator


def share_tensors_by_descriptor() -> None:
    """Where torch tensors cross processes (an averager's): by file descriptor. hivemind asks for torch's
    "file_system" sharing, which makes torch start a torch_shm_manager process per node (~65 MB PSS,
    measured); descriptors need no helper process. The variable hivemind reads still wins when it is
    set. Called by the modules that import torch for an averager, not at start-up (see potluck.lean)."""
    from torch import multiprocessing as torch_mp

    torch_mp.set_sharing_strategy(os.environ.get("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor"))


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Around a fork: every object so far goes to the collector's permanent generation, so the child's
    collections never write to (and so never copy) the heap pages it shares with this process; this
    process collects them normally again afterwards."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
