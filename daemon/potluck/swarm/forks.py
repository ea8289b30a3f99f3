"""Keeping the node's forked children (the DHT process, averagers) light.

hivemind starts its DHT and averager processes with fork, so a child shares the parent's heap (torch,
hivemind and potluck imported: ~180 MB) page by page until either side writes to a page.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator

import hivemind.utils.mpfuture  # noqa: F401  (sets its sharing strategy at import; ours must come after)
from torch import multiprocessing as torch_mp

# hivemind picks torch's "file_system" sharing at import, which makes torch start a torch_shm_manager
# process per node (~65 MB PSS, measured) for the one small buffer hivemind's futures share. File
# descriptors need no helper process; the variable hivemind reads still wins when it is set.
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
