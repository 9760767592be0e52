"""The ``sum32`` checksum of docs/format.md: additive, so blocks are hashed independently."""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B9)
_MUL = np.uint64(0x85EBCA6B)
_M32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, nogil=True)
def sum32_range(u8: np.ndarray, u32: np.ndarray, byte_lo: int, byte_hi: int) -> np.uint64:
    """Partial checksum of bytes ``[byte_lo, byte_hi)``; ``byte_lo`` is a multiple of 4.

    ``u32`` is the uint32 view of the 4-byte-aligned prefix of ``u8`` (same memory).
    """
    acc = np.uint64(0)
    full_hi = byte_hi >> 2
    if full_hi > u32.shape[0]:
        full_hi = u32.shape[0]
    for i in range(byte_lo >> 2, full_hi):
        x = np.uint64(u32[i]) ^ ((np.uint64(i) * _GOLDEN) & _M32)
        acc += (x * _MUL) & _M32
    tail = full_hi * 4
    if tail < byte_hi:  # last partial word, zero-padded
        w = np.uint64(0)
        for b in range(byte_hi - tail):
            w |= np.uint64(u8[tail + b]) << np.uint64(8 * b)
        x = w ^ ((np.uint64(full_hi) * _GOLDEN) & _M32)
        acc += (x * _MUL) & _M32
    return acc


def sum32(buf: np.ndarray) -> int:
    """Checksum of a whole contiguous buffer (any dtype), as a Python int."""
    u8 = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    u32 = u8[: u8.size // 4 * 4].view(np.uint32)
    return int(sum32_range(u8, u32, 0, u8.size))
