"""Interleaved rANS coder for one plane section (docs/format.md, mode 3), numba kernels.

Four 32-bit states (lane = symbol index & 3), 12-bit frequencies, 16-bit renormalisation. The
encoder runs backwards and writes words from the end of a scratch buffer, so the decoder reads
them forwards. Decoding checks every word read and, at the end, that all states returned to
their initial value and every word was consumed.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from llmcomp_hf.codec.models import BITMAP_BYTES, RANS_SCALE, RANS_SCALE_BITS, read_bitmap, write_bitmap

RANS_L = 1 << 16
SLOT_MASK = RANS_SCALE - 1
ERR_TRUNCATED = -1
ERR_TABLE = -2
ERR_STREAM = -3


@njit(cache=True, nogil=True)
def encode_section(plane: np.ndarray, n: int, counts: np.ndarray, freq: np.ndarray, out: np.ndarray, pos: int, words: np.ndarray) -> int:
    """Write the rANS payload of ``plane[:n]`` at ``out[pos]``; ``words`` is scratch of >= n+8 u16.

    Returns the payload length.
    """
    start = pos
    write_bitmap(counts, out, pos)
    pos += BITMAP_BYTES
    cum = np.zeros(256, np.int64)
    c = 0
    for s in range(256):
        cum[s] = c
        c += freq[s]
        if counts[s] > 0:
            out[pos] = freq[s] & 0xFF
            out[pos + 1] = freq[s] >> 8
            pos += 2
    x = np.full(4, 1 << 16, np.int64)
    w = words.shape[0]
    for i in range(n - 1, -1, -1):
        lane = i & 3
        s = plane[i]
        f = freq[s]
        xi = x[lane]
        if xi >= f << (32 - RANS_SCALE_BITS):
            w -= 1
            words[w] = xi & 0xFFFF
            xi >>= 16
        x[lane] = ((xi // f) << RANS_SCALE_BITS) + (xi % f) + cum[s]
    for lane in range(4):
        for b in range(4):
            out[pos + 4 * lane + b] = (x[lane] >> (8 * b)) & 0xFF
    pos += 16
    for i in range(w, words.shape[0]):
        out[pos] = words[i] & 0xFF
        out[pos + 1] = words[i] >> 8
        pos += 2
    return pos - start


@njit(cache=True, nogil=True)
def build_table(data: np.ndarray, pos: int, end: int, slots: np.ndarray) -> int:
    """Parse bitmap + frequencies; fill ``slots[4096]`` = sym | freq << 8 | cum << 20. New pos or <0."""
    if pos + BITMAP_BYTES > end:
        return ERR_TRUNCATED
    syms = np.empty(256, np.int64)
    k = read_bitmap(data, pos, syms)
    pos += BITMAP_BYTES
    if k < 2:
        return ERR_TABLE
    if pos + 2 * k > end:
        return ERR_TRUNCATED
    cum = 0
    for j in range(k):
        f = np.int64(data[pos + 2 * j]) | (np.int64(data[pos + 2 * j + 1]) << 8)
        if f == 0 or cum + f > RANS_SCALE:
            return ERR_TABLE
        entry = np.uint32(syms[j] | (f << 8) | (cum << 20))
        for t in range(cum, cum + f):
            slots[t] = entry
        cum += f
    if cum != RANS_SCALE:
        return ERR_TABLE
    return pos + 2 * k


@njit(cache=True, nogil=True)
def _read_state(data, pos):
    return np.int64(data[pos]) | (np.int64(data[pos + 1]) << 8) | (np.int64(data[pos + 2]) << 16) | (np.int64(data[pos + 3]) << 24)


@njit(cache=True, nogil=True)
def decode_section(data: np.ndarray, pos: int, end: int, n: int, out: np.ndarray, slots: np.ndarray) -> int:
    """Decode the rANS payload ``data[pos:end]`` into ``out[:n]``; 0 on success, <0 on error.

    The four lanes are written out by hand: numba does not inline a tuple-returning helper well
    enough here (measured 10x slower).
    """
    pos = build_table(data, pos, end, slots)
    if pos < 0:
        return pos
    if pos + 16 > end or (end - pos) & 1:
        return ERR_TRUNCATED
    x0, x1, x2, x3 = _read_state(data, pos), _read_state(data, pos + 4), _read_state(data, pos + 8), _read_state(data, pos + 12)
    if x0 < RANS_L or x1 < RANS_L or x2 < RANS_L or x3 < RANS_L:
        return ERR_STREAM
    wp = pos + 16
    i = 0
    # Reads past ``end`` are skipped but still counted in ``wp``, so the final check rejects them.
    while i < n:
        e = np.int64(slots[x0 & SLOT_MASK])
        x0 = ((e >> 8) & 0xFFF) * (x0 >> RANS_SCALE_BITS) + (x0 & SLOT_MASK) - (e >> 20)
        out[i] = e & 0xFF
        if x0 < RANS_L:
            if wp + 2 <= end:
                x0 = (x0 << 16) | np.int64(data[wp]) | (np.int64(data[wp + 1]) << 8)
            wp += 2
        if i + 1 >= n:
            break
        e = np.int64(slots[x1 & SLOT_MASK])
        x1 = ((e >> 8) & 0xFFF) * (x1 >> RANS_SCALE_BITS) + (x1 & SLOT_MASK) - (e >> 20)
        out[i + 1] = e & 0xFF
        if x1 < RANS_L:
            if wp + 2 <= end:
                x1 = (x1 << 16) | np.int64(data[wp]) | (np.int64(data[wp + 1]) << 8)
            wp += 2
        if i + 2 >= n:
            break
        e = np.int64(slots[x2 & SLOT_MASK])
        x2 = ((e >> 8) & 0xFFF) * (x2 >> RANS_SCALE_BITS) + (x2 & SLOT_MASK) - (e >> 20)
        out[i + 2] = e & 0xFF
        if x2 < RANS_L:
            if wp + 2 <= end:
                x2 = (x2 << 16) | np.int64(data[wp]) | (np.int64(data[wp + 1]) << 8)
            wp += 2
        if i + 3 >= n:
            break
        e = np.int64(slots[x3 & SLOT_MASK])
        x3 = ((e >> 8) & 0xFFF) * (x3 >> RANS_SCALE_BITS) + (x3 & SLOT_MASK) - (e >> 20)
        out[i + 3] = e & 0xFF
        if x3 < RANS_L:
            if wp + 2 <= end:
                x3 = (x3 << 16) | np.int64(data[wp]) | (np.int64(data[wp + 1]) << 8)
            wp += 2
        i += 4
    if wp != end or x0 != RANS_L or x1 != RANS_L or x2 != RANS_L or x3 != RANS_L:
        return ERR_STREAM
    return 0
