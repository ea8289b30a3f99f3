"""Value quantization for sparse updates: fp16, int8 or sign, the last two with one fp32 scale per
block of 256.

Error bounds (asserted by tests/updates/test_codec.py):

* fp16: values are clipped to +-65504 (the fp16 range), then rounded to nearest:
  ``|q - v| <= max(|v| * 2**-11, 2**-25)`` for ``|v| <= 65504``.
* int8: per block of 256 consecutive values, ``scale = max|v| / 127`` (fp32),
  ``q = round(v / scale)`` in [-127, 127]: ``|q * scale - v| <= scale / 2 * (1 + 2**-20)``
  (the factor covers fp32 rounding of the scale and the product).
* sign: one bit per value, ``-scale`` or ``+scale`` of its block, ``scale = max|v|`` of the block:
  the largest is sent exactly, the others too large by up to ``scale - |v|``. Meant for top-k with
  error feedback, which carries that into the next round; :func:`potluck.updates.sparsify.sign_survivors`
  keeps only values of at least ``scale / 2``, so that ``|q - v| <= |v|``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BLOCK",
    "FP16",
    "INT8",
    "SIGN",
    "VALUE_ENCODINGS",
    "block_max",
    "dequantize",
    "quantize",
    "roundtrip",
]

BLOCK = 256
FP16 = 0  # value_encoding codes on the wire
INT8 = 1
SIGN = 2
VALUE_ENCODINGS = {"fp16": FP16, "int8": INT8, "sign": SIGN}
SCALED = (INT8, SIGN)  # encodings with per-block fp32 scales
_FP16_MAX = 65504.0


def quantize(values: np.ndarray, encoding: int) -> tuple[bytes, bytes]:
    """float32 values -> (value bytes, scale bytes); scale bytes are empty for fp16."""
    v = np.ascontiguousarray(values, dtype=np.float32)
    if encoding == FP16:
        return np.clip(v, -_FP16_MAX, _FP16_MAX).astype("<f2").tobytes(), b""
    if encoding == SIGN:
        return _sign_quantize(v)
    if encoding != INT8:
        raise ValueError(f"unknown value encoding {encoding}")
    n = v.size
    nblocks = -(-n // BLOCK)
    padded = np.zeros(nblocks * BLOCK, np.float32)
    padded[:n] = v
    blocks = padded.reshape(nblocks, BLOCK)
    scales = np.abs(blocks).max(axis=1) / np.float32(127)
    inv = np.divide(np.float32(1), scales, out=np.zeros_like(scales), where=scales > 0)
    q = np.rint(blocks * inv[:, None])
    np.clip(q, -127, 127, out=q)
    return q.astype(np.int8).reshape(-1)[:n].tobytes(), scales.astype("<f4").tobytes()


def dequantize(value_bytes: bytes, scale_bytes: bytes, encoding: int, n: int) -> np.ndarray:
    """Inverse of :func:`quantize`; raise ValueError when the byte lengths do not match ``n``."""
    if encoding == FP16:
        if len(value_bytes) != 2 * n or scale_bytes:
            raise ValueError(f"fp16 values: expected {2 * n} bytes and no scales")
        return np.frombuffer(value_bytes, "<f2").astype(np.float32)
    if encoding == SIGN:
        return _sign_dequantize(value_bytes, scale_bytes, n)
    if encoding != INT8:
        raise ValueError(f"unknown value encoding {encoding}")
    nblocks = -(-n // BLOCK)
    if len(value_bytes) != n or len(scale_bytes) != 4 * nblocks:
        raise ValueError(f"int8 values: expected {n} value bytes and {4 * nblocks} scale bytes")
    q = np.frombuffer(value_bytes, np.int8)
    scales = np.frombuffer(scale_bytes, "<f4").astype(np.float32)
    out = np.empty(nblocks * BLOCK, np.float32)
    out[:n] = q
    out[n:] = 0
    blocks = out.reshape(nblocks, BLOCK)
    blocks *= scales[:, None]
    return out[:n]


def value_sizes(encoding: int, n: int) -> tuple[int, int]:
    """(value bytes, scale bytes) of ``n`` values in ``encoding``: what a decoder requires."""
    nblocks = -(-n // BLOCK)
    if encoding == FP16:
        return 2 * n, 0
    if encoding == INT8:
        return n, 4 * nblocks
    if encoding == SIGN:
        return -(-n // 8), 4 * nblocks
    raise ValueError(f"unknown value encoding {encoding}")


def block_max(v: np.ndarray) -> np.ndarray:
    """The largest magnitude of each block of ``BLOCK`` consecutive values (float32; the last block may be
    shorter)."""
    nblocks = -(-v.size // BLOCK)
    padded = np.zeros(nblocks * BLOCK, np.float32)
    padded[: v.size] = np.abs(v)
    return padded.reshape(nblocks, BLOCK).max(axis=1)


def _sign_quantize(v: np.ndarray) -> tuple[bytes, bytes]:
    negative = np.signbit(v) & (v != 0)  # bit 1: -scale; zeros of either sign get bit 0
    return np.packbits(negative, bitorder="little").tobytes(), block_max(v).astype("<f4").tobytes()


def _sign_dequantize(value_bytes: bytes, scale_bytes: bytes, n: int) -> np.ndarray:
    size, scale_size = value_sizes(SIGN, n)
    if len(value_bytes) != size or len(scale_bytes) != scale_size:
        raise ValueError(f"sign values: expected {size} value bytes and {scale_size} scale bytes")
    raw = np.frombuffer(value_bytes, np.uint8)
    if n % 8 and raw[-1] >> (n % 8):
        raise ValueError("sign values: padding bits set")
    scales = np.frombuffer(scale_bytes, "<f4").astype(np.float32)
    if np.signbit(scales).any():
        raise ValueError("sign values: negative scale")
    bits = np.unpackbits(raw, bitorder="little", count=n)
    out = np.repeat(scales, BLOCK)[:n]
    out[bits.view(np.bool_)] *= np.float32(-1)
    return out


def roundtrip(values: np.ndarray, encoding: int) -> np.ndarray:
    """What a receiver will see for ``values`` (used by error feedback to carry the quantization error)."""
    vb, sb = quantize(values, encoding)
    return dequantize(vb, sb, encoding, int(np.size(values)))
