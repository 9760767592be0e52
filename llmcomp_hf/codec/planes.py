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
        for i in range(n):
            w = np.int64(words[start + i])
            planes[0, i] = (w >> 7) & 0xFF
            planes[1, i] = ((w >> 8) & 0x80) | (w & 0x7F)
    elif kind == KIND_F32:
        for i in range(n):
            w = np.int64(words[start + i])
            planes[0, i] = (w >> 23) & 0xFF
            planes[1, i] = ((w >> 24) & 0x80) | ((w >> 16) & 0x7F)
            planes[2, i] = (w >> 8) & 0xFF
            planes[3, i] = w & 0xFF
    else:
        base = start * itemsize
        for i in range(n):
            for p in range(itemsize):
                planes[p, i] = words[base + i * itemsize + p]


@njit(cache=True, nogil=True)
def merge_block(planes: np.ndarray, kind: int, itemsize: int, start: int, n: int, words: np.ndarray) -> None:
    """Inverse of split_block: rebuild elements ``[start, start+n)`` of ``words``."""
    if kind == KIND_HALF:
        p0 = planes[0]
        p1 = planes[1]
        for i in range(n):
            a = np.uint16(p0[i])
            b = np.uint16(p1[i])
            words[start + i] = (a << np.uint16(7)) | ((b & np.uint16(0x80)) << np.uint16(8)) | (b & np.uint16(0x7F))
    elif kind == KIND_F32:
        p0 = planes[0]
        p1 = planes[1]
        p2 = planes[2]
        p3 = planes[3]
        for i in range(n):
            b = np.uint32(p1[i])
            words[start + i] = (
                (np.uint32(p0[i]) << np.uint32(23))
                | ((b & np.uint32(0x80)) << np.uint32(24))
                | ((b & np.uint32(0x7F)) << np.uint32(16))
                | (np.uint32(p2[i]) << np.uint32(8))
                | np.uint32(p3[i])
            )
    else:
        base = start * itemsize
        for i in range(n):
            for p in range(itemsize):
                words[base + i * itemsize + p] = planes[p, i]
