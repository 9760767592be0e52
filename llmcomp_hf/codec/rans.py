"""Interleaved rANS coder for one plane section (docs/format.md, mode 3), numba kernels.

Four 32-bit states (lane = symbol index & 3), 12-bit frequencies, 16-bit renormalisation. The
encoder runs backwards and writes words from the end of a scratch buffer, so the decoder reads
them forwards. Decoding never reads past the section end (a fast loop runs in rounds that surely
have room, a checked tail does the rest) and, at the end, checks that all states returned to
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
# Fast-loop constants: unsigned, so numba emits no wraparound code for the array indices.
_U1, _U2, _U3, _U4, _U8, _U16, _U20 = (np.uint64(v) for v in (1, 2, 3, 4, 8, 16, 20))
_U255, _U4095 = np.uint64(255), np.uint64(0xFFF)
_UBITS, _UMASK, _UL = np.uint64(RANS_SCALE_BITS), np.uint64(SLOT_MASK), np.uint64(RANS_L)


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

    A fast loop decodes whole groups of 4 symbols in rounds that surely have input and output
    room (a symbol reads at most one word), without checks; the tail is decoded with checks.
    The four lanes are written out by hand: numba does not inline a tuple-returning helper
    well enough here (it keeps the arrays' reference counting in the loop: 2-10x slower).
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
    # States stay below 2**32 and every step is non-negative (cum <= slot), so unsigned
    # arithmetic gives the same values. A round of r groups reads < 8r bytes, writes 4r symbols.
    # The renormalisation word is always read (in bounds) and selected: the branch is
    # unpredictable. Its two bytes are OR-ed first so that LLVM makes them one 16-bit load.
    u0, u1, u2, u3 = np.uint64(x0), np.uint64(x1), np.uint64(x2), np.uint64(x3)
    while True:
        rounds = min((end - wp) >> 3, (n - i) >> 2)
        if rounds <= 0:
            break
        w, o = np.uint64(wp), np.uint64(i)
        for _ in range(rounds):
            g = np.uint64(slots[u0 & _UMASK])
            u0 = ((g >> _U8) & _U4095) * (u0 >> _UBITS) + (u0 & _UMASK) - (g >> _U20)
            out[o] = g & _U255
            r = u0 < _UL
            v = (u0 << _U16) | (np.uint64(data[w]) | (np.uint64(data[w + _U1]) << _U8))
            u0 = v if r else u0
            w += np.uint64(r) << _U1
            g = np.uint64(slots[u1 & _UMASK])
            u1 = ((g >> _U8) & _U4095) * (u1 >> _UBITS) + (u1 & _UMASK) - (g >> _U20)
            out[o + _U1] = g & _U255
            r = u1 < _UL
            v = (u1 << _U16) | (np.uint64(data[w]) | (np.uint64(data[w + _U1]) << _U8))
            u1 = v if r else u1
            w += np.uint64(r) << _U1
            g = np.uint64(slots[u2 & _UMASK])
            u2 = ((g >> _U8) & _U4095) * (u2 >> _UBITS) + (u2 & _UMASK) - (g >> _U20)
            out[o + _U2] = g & _U255
            r = u2 < _UL
            v = (u2 << _U16) | (np.uint64(data[w]) | (np.uint64(data[w + _U1]) << _U8))
            u2 = v if r else u2
            w += np.uint64(r) << _U1
            g = np.uint64(slots[u3 & _UMASK])
            u3 = ((g >> _U8) & _U4095) * (u3 >> _UBITS) + (u3 & _UMASK) - (g >> _U20)
            out[o + _U3] = g & _U255
            r = u3 < _UL
            v = (u3 << _U16) | (np.uint64(data[w]) | (np.uint64(data[w + _U1]) << _U8))
            u3 = v if r else u3
            w += np.uint64(r) << _U1
            o += _U4
        wp, i = np.int64(w), np.int64(o)
    x0, x1, x2, x3 = np.int64(u0), np.int64(u1), np.int64(u2), np.int64(u3)
    # The tail. Reads past ``end`` are skipped but still counted in ``wp``, so the final check rejects them.
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
