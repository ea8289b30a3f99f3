"""potluck.swarm.forks: what keeps the node's forked children light."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

from potluck.swarm.forks import frozen_heap


def test_a_daemon_shares_tensors_by_file_descriptor_so_no_shm_manager_process_starts():
    # the tests' conftest sets hivemind's variable; a daemon started by hand has none
    env = {k: v for k, v in os.environ.items() if k != "HIVEMIND_MEMORY_SHARING_STRATEGY"}
    # torch loads with the averager (potluck.lean): hivemind's futures no longer set torch's strategy
    code = "import potluck.engine.averager, torch.multiprocessing as m; print(m.get_sharing_strategy())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["file_descriptor"]
    env["HIVEMIND_MEMORY_SHARING_STRATEGY"] = "file_system"  # hivemind's variable still wins
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["file_system"]


def test_the_heap_is_frozen_only_around_the_fork_even_when_it_fails():
    kept = [object() for _ in range(10)]  # objects that exist before the fork
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        assert gc.get_freeze_count() >= len(kept)
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), frozen_heap():
        raise RuntimeError("the child did not start")
    assert gc.get_freeze_count() == 0
