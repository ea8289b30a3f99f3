"""hivemind's DecentralizedAverager, made fit for exact integer sums.

hivemind's reducers accumulate in torch's default dtype (float32), which cannot hold the fixed-point
contributions of potluck.rounds.fixedpoint exactly. The averager's child process switches its
default dtype to float64, so float64 parts are summed in float64 and the exact integer sum is
recoverable on every peer. The child also dies with the daemon (PR_SET_PDEATHSIG); one is started
per attempt and shut down after it (:func:`shutdown_averager`).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal

import torch
from hivemind.averaging import DecentralizedAverager

from potluck.swarm.forks import share_tensors_by_descriptor

share_tensors_by_descriptor()


class CanonicalAverager(DecentralizedAverager):
    def run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        torch.set_default_dtype(torch.float64)
        super().run()


def next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def shutdown_averager(averager: CanonicalAverager) -> None:
    with contextlib.suppress(Exception):
        averager.shutdown()
    averager.join(timeout=3)
    if averager.is_alive():
        averager.kill()
