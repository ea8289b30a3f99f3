"""A depth limit on hivemind's msgpack ext decoding, the DHT's one crash-on-input path.

hivemind decodes ext types (tuples, dictionary values) by recursing through a Python hook once per
level; a 690-byte payload nested ~200 deep from any peer overflows the C stack of the process serving
the DHT (the daemon itself: potluck.swarm.dhtthread) before any validator runs (shared/HIVEMIND.md).
Bounding the hook's depth turns that into a ValueError, which hivemind's RPC layer returns to the
sender as an error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from hivemind.utils.serializer import MSGPackSerializer

MAX_EXT_DEPTH = 16  # hivemind's own values nest ext types 2-3 deep
_state = threading.local()


def install_ext_depth_guard(on_reject: Callable[[], None] = lambda: None) -> None:
    """Patch MSGPackSerializer in this process (and every process forked from it); idempotent."""
    original = MSGPackSerializer._decode_ext_types.__func__
    if getattr(original, "potluck_guard", False):
        return

    def guarded(cls, type_code: int, data: bytes):
        depth = getattr(_state, "depth", 0)
        if depth >= MAX_EXT_DEPTH:
            on_reject()
            raise ValueError(f"msgpack ext types nested deeper than {MAX_EXT_DEPTH}")
        _state.depth = depth + 1
        try:
            return original(cls, type_code, data)
        finally:
            _state.depth = depth

    guarded.potluck_guard = True  # type: ignore[attr-defined]
    MSGPackSerializer._decode_ext_types = classmethod(guarded)
