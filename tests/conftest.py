from __future__ import annotations

import contextlib
import os
import uuid

import psutil
import pytest

# hivemind's multiprocessing must not use /dev/shm file handles that outlive killed peers
os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")
# Every process this session starts inherits the tag, so teardown kills only our own leftovers
# (not those of another pytest running on the same machine).
SESSION_TAG = uuid.uuid4().hex
os.environ["POTLUCK_TEST_SESSION"] = SESSION_TAG


def _our_leftovers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and proc.environ().get("POTLUCK_TEST_SESSION") == SESSION_TAG:
                found.append(proc)
    return found


@pytest.fixture(scope="session", autouse=True)
def kill_leftover_processes():
    """A failing multi-process test must not leave nodes running for the next one (or for CI)."""
    yield
    for proc in _our_leftovers():
        with contextlib.suppress(psutil.Error):
            proc.kill()
