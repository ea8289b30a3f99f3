"""Bounded msgpack decoding for bytes received from peers.

``msgpack.unpackb`` recurses once per nesting level and trusts declared lengths only as far as its
``max_*_len`` limits. Before handing bytes to it, :func:`bounded_unpackb` walks the msgpack headers
iteratively (an explicit stack, no recursion) and rejects, without allocating anything in
proportion to a declared length:

* input longer than ``max_bytes`` (:class:`Oversized`),
* containers nested deeper than ``max_depth`` (:class:`TooDeep`), e.g. 100k bytes of ``0x91``,
* declared lengths above the per-kind limits (:class:`Oversized`),
* declared lengths or element counts that cannot fit in the remaining bytes, truncation, trailing
  bytes, the reserved byte 0xc1 and every ext type (:class:`Malformed`).

Only then is the buffer decoded, with the same limits passed to msgpack as a second guard.
The scan costs one Python step per msgpack object, so it suits messages made of a few large
``bin`` fields (updates, DHT records), not millions of small scalars.
"""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = [
    "Malformed",
    "Oversized",
    "TooDeep",
    "WireError",
    "bounded_unpackb",
    "pack_pair",
    "scan_msgpack",
    "unpack_pair",
]


class WireError(ValueError):
    """Bytes that are not an acceptable msgpack message. ``kind`` names the subclass for counters."""

    kind = "malformed"


class Malformed(WireError):
    kind = "malformed"


class Oversized(WireError):
    kind = "oversized"


class TooDeep(WireError):
    kind = "too_deep"


# Fixed-size scalars: first byte -> number of payload bytes after it.
_FIXED = {
    0xC0: 0, 0xC2: 0, 0xC3: 0,  # nil, false, true
    0xCA: 4, 0xCB: 8,  # float32, float64
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,  # uint8..64
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,  # int8..64
}  # fmt: skip
# Length-prefixed: first byte -> (width of the big-endian length, "bin" | "str").
_SIZED = {
    0xC4: (1, "bin"), 0xC5: (2, "bin"), 0xC6: (4, "bin"),
    0xD9: (1, "str"), 0xDA: (2, "str"), 0xDB: (4, "str"),
}  # fmt: skip
# Containers: first byte -> (width of the count, "array" | "map").
_CONTAINERS = {0xDC: (2, "array"), 0xDD: (4, "array"), 0xDE: (2, "map"), 0xDF: (4, "map")}


def scan_msgpack(
    data: bytes | bytearray | memoryview,
    *,
    max_depth: int,
    max_str_len: int,
    max_bin_len: int,
    max_array_len: int,
    max_map_len: int,
) -> None:
    """Check that ``data`` is exactly one msgpack object within the limits, without decoding it."""
    view = memoryview(data).cast("B")
    n = len(view)
    pos = 0
    stack: list[int] = []  # remaining child objects of each open container
    while True:
        if pos >= n:
            raise Malformed("truncated msgpack")
        b = view[pos]
        pos += 1
        count = -1  # >= 0 when this object is a container with that many children
        if b <= 0x7F or b >= 0xE0:  # positive / negative fixint
            pass
        elif b <= 0x8F:  # fixmap
            count, kind = (b & 0x0F), "map"
        elif b <= 0x9F:  # fixarray
            count, kind = (b & 0x0F), "array"
        elif b <= 0xBF:  # fixstr
            length = b & 0x1F
            if length > max_str_len:
                raise Oversized(f"str of {length} bytes > {max_str_len}")
            pos += length
        elif b in _FIXED:
            pos += _FIXED[b]
        elif b in _SIZED:
            width, kind = _SIZED[b]
            if pos + width > n:
                raise Malformed("truncated length")
            length = int.from_bytes(view[pos : pos + width], "big")
            pos += width
            limit = max_bin_len if kind == "bin" else max_str_len
            if length > limit:
                raise Oversized(f"{kind} of {length} bytes > {limit}")
            pos += length
        elif b in _CONTAINERS:
            width, kind = _CONTAINERS[b]
            if pos + width > n:
                raise Malformed("truncated count")
            count = int.from_bytes(view[pos : pos + width], "big")
            pos += width
        else:  # 0xc1 (never used) and all ext types
            raise Malformed(f"unsupported msgpack type byte 0x{b:02x}")
        if pos > n:
            raise Malformed("declared length exceeds the data")
        if count >= 0:
            if len(stack) >= max_depth:
                raise TooDeep(f"nesting deeper than {max_depth}")
            limit = max_map_len if kind == "map" else max_array_len
            if count > limit:
                raise Oversized(f"{kind} of {count} entries > {limit}")
            children = 2 * count if kind == "map" else count
            if children > n - pos:  # every child takes at least one byte
                raise Malformed("declared count exceeds the data")
            if children:
                stack.append(children)
                continue
        # One object is complete: close every container it completes.
        while stack:
            stack[-1] -= 1
            if stack[-1]:
                break
            stack.pop()
        if not stack:
            if pos != n:
                raise Malformed(f"{n - pos} trailing bytes")
            return


def bounded_unpackb(
    data: bytes,
    max_bytes: int,
    max_depth: int,
    *,
    max_str_len: int = 1 << 16,
    max_bin_len: int | None = None,
    max_array_len: int = 1 << 16,
    max_map_len: int = 1 << 12,
) -> Any:
    """Decode one msgpack object from untrusted ``data``; raise a :class:`WireError` subclass, never more.

    Strings decode as ``str`` (invalid UTF-8 is :class:`Malformed`), bins as ``bytes``, arrays as
    lists; map keys must be str or bytes. ``max_bin_len`` defaults to ``max_bytes``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise Malformed(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise Oversized(f"{len(data)} bytes > {max_bytes}")
    if max_bin_len is None:
        max_bin_len = max_bytes
    limits = {
        "max_str_len": max_str_len,
        "max_bin_len": max_bin_len,
        "max_array_len": max_array_len,
        "max_map_len": max_map_len,
    }
    scan_msgpack(data, max_depth=max_depth, **limits)
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, max_ext_len=0, **limits)
    except Exception as e:  # the scan makes this unreachable in practice; keep the contract anyway
        raise Malformed(f"msgpack: {e}") from None


def pack_pair(first: bytes, second: bytes) -> bytes:
    """``[first, second]`` as msgpack: how a signed body travels with its signature."""
    return msgpack.packb([first, second], use_bin_type=True)


def unpack_pair(data: bytes, max_bytes: int) -> tuple[bytes, bytes]:
    """The two byte strings of :func:`pack_pair`, from untrusted ``data``; :class:`WireError` otherwise."""
    pair = bounded_unpackb(data, max_bytes, 1, max_array_len=2, max_str_len=0, max_map_len=0)
    if type(pair) is not list or len(pair) != 2 or not all(type(x) is bytes for x in pair):
        raise Malformed("expected [bin, bin]")
    return pair[0], pair[1]
