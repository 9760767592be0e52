"""Bit-plane split and merge (docs/format.md, "Planes"), numba kernels per block.

Three layouts: KIND_HALF (bf16/fp16 as uint16 words: exponent-ish byte + sign/mantissa byte),
KIND_F32 (float32 as uint32 words: exponent, sign+7 mantissa bits, two mantissa bytes) and
KIND_BYTES (any other dtype: byte grouping of the raw little-endian bytes).
"""

from __future__ import annotations

import numpy as np
from numba import njit

KIND_HALF, KIND_F32, KIND_BYTES = 0, 1, 2


def layout_of(dtype_name: str, itemsize: int) -> int:
    """The plane layout used for a dtype name from docs/format.md."""
    if dtype_name in ("bfloat16", "float16"):
        return KIND_HALF
    if dtype_name == "float32":
        return KIND_F32
    return KIND_BYTES


@njit(cache=True, nogil=True)
def split_block(words: np.ndarray, kind: int, itemsize: int, start: int, n: int, planes: np.ndarray) -> None:
    """Write the planes of elements ``[start, start+n)`` into ``planes[p, :n]``."""
    if kind == KIND_HALF:
        w = words[start : start + n]
        for i in range(n):
            x = np.uint32(w[i])
            planes[0, i] = np.uint8((x >> np.uint32(7)) & np.uint32(0xFF))
            planes[1, i] = np.uint8(((x >> np.uint32(8)) & np.uint32(0x80)) | (x & np.uint32(0x7F)))
    elif kind == KIND_F32:
        w = words[start : start + n]
        for i in range(n):
            x = np.uint32(w[i])
            planes[0, i] = np.uint8((x >> np.uint32(23)) & np.uint32(0xFF))
            planes[1, i] = np.uint8(((x >> np.uint32(24)) & np.uint32(0x80)) | ((x >> np.uint32(16)) & np.uint32(0x7F)))
            planes[2, i] = np.uint8((x >> np.uint32(8)) & np.uint32(0xFF))
            planes[3, i] = np.uint8(x & np.uint32(0xFF))
    else:
        src = words[start * itemsize : (start + n) * itemsize]
        for p in range(itemsize):
            for i in range(n):
                planes[p, i] = src[i * itemsize + p]


@njit(cache=True, nogil=True, inline="always")
def _plane(planes, src, data, p, n):
    """Plane ``p`` of a decoded block: straight from the stream when it was stored raw."""
    if src[p] >= 0:
        return data[src[p] : src[p] + n]
    return planes[p, :n]


@njit(cache=True, nogil=True)
def merge_block(planes: np.ndarray, src: np.ndarray, data: np.ndarray, kind: int, itemsize: int, start: int, n: int, words: np.ndarray) -> None:
    """Inverse of split_block: rebuild elements ``[start, start+n)`` of ``words``.

    Plane ``p`` is read from ``data[src[p]:]`` when ``src[p] >= 0`` (a raw section), else from
    ``planes[p]``.
    """
    if kind == KIND_HALF:
        a = _plane(planes, src, data, 0, n)
        b = _plane(planes, src, data, 1, n)
        w = words[start : start + n]
        for i in range(n):
            hi = np.uint32(a[i])
            lo = np.uint32(b[i])
            w[i] = np.uint16((hi << np.uint32(7)) | ((lo & np.uint32(0x80)) << np.uint32(8)) | (lo & np.uint32(0x7F)))
    elif kind == KIND_F32:
        a = _plane(planes, src, data, 0, n)
        b = _plane(planes, src, data, 1, n)
        c = _plane(planes, src, data, 2, n)
        d = _plane(planes, src, data, 3, n)
        w = words[start : start + n]
        for i in range(n):
            x = np.uint32(b[i])
            w[i] = (
                (np.uint32(a[i]) << np.uint32(23))
                | ((x & np.uint32(0x80)) << np.uint32(24))
                | ((x & np.uint32(0x7F)) << np.uint32(16))
                | (np.uint32(c[i]) << np.uint32(8))
                | np.uint32(d[i])
            )
    else:
        dst = words[start * itemsize : (start + n) * itemsize]
        for p in range(itemsize):
            q = _plane(planes, src, data, p, n)
            for i in range(n):
                dst[i * itemsize + p] = q[i]
