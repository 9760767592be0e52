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
    k = write_bitmap(counts, out, pos)
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


@njit(cache=True, nogil=True, inline="always")
def _step(slots, x, data, wp, end):
    """Decode one symbol from state ``x``; returns (symbol, new x, new word pos)."""
    e = np.int64(slots[x & SLOT_MASK])
    x = ((e >> 8) & 0xFFF) * (x >> RANS_SCALE_BITS) + (x & SLOT_MASK) - (e >> 20)
    if x < RANS_L:
        if wp + 2 <= end:
            x = (x << 16) | np.int64(data[wp]) | (np.int64(data[wp + 1]) << 8)
        wp += 2  # past the end: caught by the final check
    return e & 0xFF, x, wp


@njit(cache=True, nogil=True)
def decode_section(data: np.ndarray, pos: int, end: int, n: int, out: np.ndarray, slots: np.ndarray) -> int:
    """Decode the rANS payload ``data[pos:end]`` into ``out[:n]``; 0 on success, <0 on error."""
    pos = build_table(data, pos, end, slots)
    if pos < 0:
        return pos
    if pos + 16 > end or (end - pos) & 1:
        return ERR_TRUNCATED
    st = np.empty(4, np.int64)
    for lane in range(4):
        v = 0
        for b in range(4):
            v |= np.int64(data[pos + 4 * lane + b]) << (8 * b)
        if v < RANS_L:
            return ERR_STREAM
        st[lane] = v
    wp = pos + 16
    x0, x1, x2, x3 = st[0], st[1], st[2], st[3]
    i = 0
    while i + 4 <= n:
        s0, x0, wp = _step(slots, x0, data, wp, end)
        s1, x1, wp = _step(slots, x1, data, wp, end)
        s2, x2, wp = _step(slots, x2, data, wp, end)
        s3, x3, wp = _step(slots, x3, data, wp, end)
        out[i] = s0
        out[i + 1] = s1
        out[i + 2] = s2
        out[i + 3] = s3
        i += 4
    if i < n:
        out[i], x0, wp = _step(slots, x0, data, wp, end)
        i += 1
    if i < n:
        out[i], x1, wp = _step(slots, x1, data, wp, end)
        i += 1
    if i < n:
        out[i], x2, wp = _step(slots, x2, data, wp, end)
    if wp != end or x0 != RANS_L or x1 != RANS_L or x2 != RANS_L or x3 != RANS_L:
        return ERR_STREAM
    return 0
