"""The ``sum32`` checksum of docs/format.md: additive, so blocks are hashed independently."""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint32(0x9E3779B9)
_MUL = np.uint32(0x85EBCA6B)
_MUL2 = np.uint32(0xC2B2AE35)


@njit(cache=True, nogil=True, inline="always")
def _mix(w, i):
    """murmur3's 32-bit finaliser of (word XOR position key): every input bit reaches every output bit."""
    h = np.uint64(np.uint32(w) ^ np.uint32(np.uint32(i) * _GOLDEN))
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(_MUL)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(_MUL2)) & np.uint64(0xFFFFFFFF)
    return h ^ (h >> np.uint64(16))


@njit(cache=True, nogil=True)
def sum32_range(u8: np.ndarray, u32: np.ndarray, byte_lo: int, byte_hi: int) -> np.uint64:
    """Partial checksum of bytes ``[byte_lo, byte_hi)``; ``byte_lo`` is a multiple of 4.

    ``u32`` is the uint32 view of the 4-byte-aligned prefix of ``u8`` (same memory). Written as
    a plain loop so LLVM vectorises it (sums mod 2**64 do not depend on order).
    """
    lo = byte_lo >> 2
    full_hi = min(byte_hi >> 2, u32.shape[0])
    w = u32[lo:full_hi]
    acc = np.uint64(0)
    for j in range(full_hi - lo):
        acc += _mix(w[j], lo + j)
    tail = full_hi * 4
    if tail < byte_hi:  # last partial word, zero-padded
        last = np.uint32(0)
        for b in range(byte_hi - tail):
            last |= np.uint32(u8[tail + b]) << np.uint32(8 * b)
        acc += _mix(last, full_hi)
    return acc


def sum32(buf: np.ndarray) -> int:
    """Checksum of a whole contiguous buffer (any dtype), as a Python int."""
    u8 = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    u32 = u8[: u8.size // 4 * 4].view(np.uint32)
    return int(sum32_range(u8, u32, 0, u8.size))
