"""potluck.lean: a keeper's imports load no torch; hivemind's names and futures work without it."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys

from potluck.lean import PrivateByte, SharedBuffer

KEEPER = """
import sys
import potluck.lifecycle, potluck.node  # everything a keeper imports to start
from potluck.tasks import get_task
task = get_task("toy")
task.evaluate(task.init_state(0))  # a keeper scores every version
import hivemind
assert hivemind.DHT is hivemind.dht.DHT  # the package's names still resolve, on first use
print("torch" in sys.modules)
from hivemind.utils import TensorDescriptor  # a name that needs torch loads it
print("torch" in sys.modules, TensorDescriptor.__module__)
"""


def test_a_keepers_imports_load_no_torch_until_a_name_needs_it():
    done = subprocess.run([sys.executable, "-c", KEEPER], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "hivemind.utils.tensor_descr"]


def _finish(conn) -> None:  # runs in the child: the future came through the pipe (its byte by fd)
    future = conn.recv()
    future.set_result(("done", future.done()))


def test_a_future_created_here_is_fulfilled_by_another_process():
    from hivemind.utils import MPFuture

    future = MPFuture()
    assert type(future._shared_state_code.buffer) is SharedBuffer  # the shim's byte, not a torch tensor
    ours, theirs = mp.Pipe()
    child = mp.get_context("fork").Process(target=_finish, args=(theirs,))
    child.start()
    ours.send(future)
    assert future.result(timeout=30) == ("done", False)  # the child saw it pending, then finished it
    assert future.done()
    child.join(timeout=30)
    assert child.exitcode == 0


def test_bytes_are_shared_with_a_forked_child_and_a_private_byte_stands_alone():
    buffer = SharedBuffer(4)
    buffer[2][...] = 7
    child = mp.get_context("fork").Process(target=lambda: buffer[3].__setitem__(..., 9))
    child.start()
    child.join(timeout=30)
    assert (buffer[2].item(), buffer[3].item(), len(buffer)) == (7, 9, 4)
    alone = PrivateByte(1)
    alone[...] = 3
    assert alone.item() == 3
