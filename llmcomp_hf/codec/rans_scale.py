"""rANS with scale context (docs/format.md, mode 5): plane 0 of a float, modelled per row and column;
the decoder and the format's constants (the encoder: scale_blocks.py).

Rows of a weight differ in scale (an embedding's rare tokens stay small; output neurons differ),
and so do columns. The encoder stores per row ``R[r]`` and per column ``C[j]`` (0..127, quarter
units of plane 0: a quarter binade for bf16/fp32), and element ``i`` (global index ``g``, row
``g // L``, column ``g % L``) has ``s = R[r] + C[j]``: its symbol is ``p0 + (s >> 2)`` (mod 256), so
rows of different scale share one distribution, and its table is chosen by the quarter
``s & 3`` and the top ``k`` mantissa bits of its plane-1 byte (``4 * 2**k`` tables). Measured on
MiniLM bf16 (offline, per-block tables): 0.6566 against rans-ctx's 0.6589 model.

Payload: ref byte (``ref | short << 4``, as mode 4), the model when ``ref == 0`` (k and column
flag, ``L``, the column values, the tables in mode 4's format), the block's row values, the
lane states and the words. Every read is checked against the section end; values past 127 and
non-zero padding are corrupt. Decoding: the scale ``s`` of each element is first written into
the output plane, then the rANS loop reads it back, picks the table and writes the exponent.

CUDA: no decoder yet (``llmcomp_hf.codec.cuda`` refuses rans-scale streams). One needs, per group
of 16 blocks, the model parsed once into global memory (column map u8[L]; 4 * 2**k tables of 4096
slot entries, 16 at the encoder's k <= 2, or per-context cumulative frequencies searched per symbol),
per block the row list parsed (a sequential exp-Golomb walk, <= n/16 + 2 values), and the 4-lane
rANS loop with ``s = R[row] + C[col]`` per element; 4 lanes give only 4 threads per block, as for
mode 4, so a fast GPU decoder wants a variant with many more interleaved lanes (a new mode).
"""

from __future__ import annotations

import numpy as np
from numba import njit

import llmcomp_hf.codec.rans_ctx as rans_ctx
from llmcomp_hf.codec.models import RANS_SCALE, RANS_SCALE_BITS

N_CTX = 32  # 4 quarters x 2**3 mantissa contexts, the format's limit
# The encoder stops at k = 2 (16 tables, 256 KiB of decode slots, which stay in L2): on MiniLM's word
# embedding + an FFN weight (bf16, 1 thread, side by side) k <= 3 gave ratio 0.6566 at 363 MB/s,
# k <= 2 0.6567 at 487 MB/s, k <= 1 0.6574 at 511 MB/s (rans-ctx: 0.6579, ~630 MB/s).
ENCODER_MAX_K = 2
MAX_SCALE = 127  # R and C values
MIN_ROW = 16  # shortest row length L (rows per block stay <= n/16 + 2)
MAX_COL_MAP = 1 << 16  # longest row with a column map
MODEL_HEAD = 5  # k | col << 2, u32 L
MEMO_CAP = 1 << 15  # model bytes remembered to skip a rebuild (bigger models are rebuilt per block)
MEMO_BYTES = 4 + MEMO_CAP
SLOTS = N_CTX * RANS_SCALE + MAX_COL_MAP  # tables, then the column map
RANS_L = 1 << 16
SLOT_MASK = RANS_SCALE - 1
ERR_TRUNCATED, ERR_TABLE, ERR_STREAM = rans_ctx.ERR_TRUNCATED, rans_ctx.ERR_TABLE, rans_ctx.ERR_STREAM
MODE = 5
# Fast-loop constants: unsigned, so numba emits no wraparound code for the array indices.
_U1, _U2, _U3, _U4, _U8, _U16, _U20 = (np.uint64(v) for v in (1, 2, 3, 4, 8, 16, 20))
_U255, _U4095 = np.uint64(255), np.uint64(0xFFF)
_UBITS, _UMASK, _UL = np.uint64(RANS_SCALE_BITS), np.uint64(SLOT_MASK), np.uint64(RANS_L)


# --- decoder -------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def model_span(data: np.ndarray, index: np.ndarray, b: int, pos: int, end: int) -> tuple[int, int]:
    """(start, end) of the model a mode-5 payload ``data[pos:end]`` of block ``b`` uses, or (err, 0):
    after the ref byte when ``ref == 0``, else in the plane-0 section of block ``b - ref`` (same
    group of 16), which must be a mode-5 section with ref 0."""
    if pos >= end:
        return ERR_TRUNCATED, 0
    ref = np.int64(data[pos] & 15)
    if ref == 0:
        return pos + 1, end
    if ref > b % 16:
        return ERR_TABLE, 0
    lo, hi = index[b - ref], index[b - ref + 1]
    if lo + 6 > hi or data[lo] != MODE or data[lo + 5] & 15 != 0:
        return ERR_TABLE, 0
    size = np.int64(data[lo + 1]) | (np.int64(data[lo + 2]) << 8) | (np.int64(data[lo + 3]) << 16) | (np.int64(data[lo + 4]) << 24)
    if lo + 5 + size > hi:
        return ERR_TABLE, 0
    return lo + 6, lo + 5 + size


@njit(cache=True, nogil=True)
def read_codes(data, q, end, count, dst, limit) -> int:
    """Order byte at ``data[q]``, then ``count`` exp-Golomb zigzag deltas; the running values
    (each 0..``limit``) go to ``dst[:count]`` (``dst`` None-like empty: only checked). Returns the
    position after the padding, or <0."""
    if q >= end:
        return ERR_TRUNCATED
    r = np.int64(data[q])
    if r > rans_ctx.MAX_ORDER:
        return ERR_TABLE
    q += 1
    bit, prev = 0, np.int64(0)
    for t in range(count):
        v, bit = rans_ctx._read_code(data, q, end, bit, r)
        if v < 0:
            return v
        prev += (v >> 1) if v & 1 == 0 else -((v + 1) >> 1)
        if prev < 0 or prev > limit:
            return ERR_TABLE
        if t < dst.shape[0]:
            dst[t] = prev
    q += (bit + 7) >> 3
    if bit & 7 and data[q - 1] >> (bit & 7):  # padding bits must be zero
        return ERR_TABLE
    return q


@njit(cache=True, nogil=True)
def load_model(data, lo, hi, slots, memo) -> tuple[int, int, int, bool]:
    """Parse the model at ``data[lo:hi]``: (position after it or <0, k, L, column map present).

    Tables go to ``slots[:4 * 2**k * 4096]``, the column map to ``slots[N_CTX * 4096:]``. ``memo``
    (u8[MEMO_BYTES]) keeps the bytes of the model now in ``slots``: the same bytes skip the rebuild.
    """
    if lo + MODEL_HEAD > hi:
        return ERR_TRUNCATED, 0, 0, False
    head = np.int64(data[lo])
    k, has_col = head & 3, (head >> 2) & 1
    L = np.int64(data[lo + 1]) | (np.int64(data[lo + 2]) << 8) | (np.int64(data[lo + 3]) << 16) | (np.int64(data[lo + 4]) << 24)
    if head >> 3 or L < MIN_ROW or (has_col and L > MAX_COL_MAP):
        return ERR_TABLE, 0, 0, False
    known = np.int64(memo[0]) | (np.int64(memo[1]) << 8) | (np.int64(memo[2]) << 16)
    if known > 0 and lo + known <= hi:
        same = True
        for j in range(known):
            if memo[4 + j] != data[lo + j]:
                same = False
                break
        if same:
            return lo + known, k, L, has_col == 1
    memo[0] = 0
    memo[1] = 0
    memo[2] = 0
    q = lo + MODEL_HEAD
    if has_col:
        q = read_codes(data, q, hi, L, slots[N_CTX * RANS_SCALE : N_CTX * RANS_SCALE + L], MAX_SCALE)
        if q < 0:
            return q, 0, 0, False
    q, tk = rans_ctx.build_tables(data, q, hi, slots, memo[:0], 2)
    if q < 0:
        return q, 0, 0, False
    if tk != k:
        return ERR_TABLE, 0, 0, False
    size = q - lo
    if size <= MEMO_CAP:
        memo[4 : 4 + size] = data[lo:q]
        memo[0] = size & 0xFF
        memo[1] = (size >> 8) & 0xFF
        memo[2] = size >> 16
    return q, k, L, has_col == 1


@njit(cache=True, nogil=True)
def _fill_scales(data, q, end, g0, n, L, has_col, slots, out) -> int:
    """Read the block's row values at ``data[q:end]`` and write every element's ``s`` into
    ``out[:n]``; returns the position after the rows or <0."""
    r0, r1 = g0 // L, (g0 + n - 1) // L
    if q >= end:
        return ERR_TRUNCATED
    r = np.int64(data[q])
    if r > rans_ctx.MAX_ORDER:
        return ERR_TABLE
    q += 1
    bit, prev = 0, np.int64(0)
    cbase = N_CTX * RANS_SCALE
    for row in range(r0, r1 + 1):
        v, bit = rans_ctx._read_code(data, q, end, bit, r)
        if v < 0:
            return v
        prev += (v >> 1) if v & 1 == 0 else -((v + 1) >> 1)
        if prev < 0 or prev > MAX_SCALE:
            return ERR_TABLE
        a, z = max(row * L, g0) - g0, min((row + 1) * L, g0 + n) - g0
        v8 = np.uint32(prev)
        if has_col:
            j0 = cbase + (a + g0) - row * L  # the column map from this row's first element in the block
            col = slots[j0 : j0 + (z - a)]
            dst = out[a:z]
            for t in range(z - a):
                dst[t] = np.uint8(v8 + col[t])
        else:
            out[a:z] = np.uint8(prev)
    q += (bit + 7) >> 3
    if bit & 7 and data[q - 1] >> (bit & 7):
        return ERR_TABLE
    return q


@njit(cache=True, nogil=True)
def _read_state(data, pos, nb):
    x = np.int64(data[pos]) | (np.int64(data[pos + 1]) << 8) | (np.int64(data[pos + 2]) << 16)
    if nb == 4:
        x |= np.int64(data[pos + 3]) << 24
        if x < rans_ctx.STATE3_LIMIT:
            return -1
    return x


@njit(cache=True, nogil=True)
def decode_payload(data, index, b, block_size, pos, end, n, ctx, out, slots, memo) -> int:
    """Decode the mode-5 payload ``data[pos:end]`` of block ``b`` into ``out[:n]``; 0 or <0.

    ``ctx[:n]`` is the block's plane 1 (decoded first). ``slots`` (u32[SLOTS]) and ``memo``
    (u8[MEMO_BYTES]) are this thread's scratch.
    """
    m_lo, m_hi = model_span(data, index, b, pos, end)
    if m_lo < 0:
        return m_lo
    m_end, k, L, has_col = load_model(data, m_lo, m_hi, slots, memo)
    if m_end < 0:
        return m_end
    flags = np.int64(data[pos] >> 4)
    q = m_end if data[pos] & 15 == 0 else pos + 1
    q = _fill_scales(data, q, end, b * block_size, n, L, has_col, slots, out)
    if q < 0:
        return q
    n0, n1, n2, n3 = 4 - (flags & 1), 4 - ((flags >> 1) & 1), 4 - ((flags >> 2) & 1), 4 - (flags >> 3)
    sb = n0 + n1 + n2 + n3
    if q + sb > end or (end - q - sb) & 1:
        return ERR_TRUNCATED
    x = np.empty(4, np.int64)
    x[0] = _read_state(data, q, n0)
    x[1] = _read_state(data, q + n0, n1)
    x[2] = _read_state(data, q + n0 + n1, n2)
    x[3] = _read_state(data, q + n0 + n1 + n2, n3)
    if x.min() < RANS_L:
        return ERR_STREAM
    wp = q + sb
    ks, ms, mm = np.uint64(k), np.uint64(7 - k), np.uint64((1 << k) - 1)
    # Fast loop: rounds of 4 symbols while 8 word bytes surely remain (no bounds checks inside);
    # unsigned 64-bit throughout, as in rans.decode_section (mixed signedness would go through floats).
    u0, u1, u2, u3 = np.uint64(x[0]), np.uint64(x[1]), np.uint64(x[2]), np.uint64(x[3])
    i = 0
    while True:
        rounds = min((end - wp) >> 3, (n - i) >> 2)
        if rounds <= 0:
            break
        w, o = np.uint64(wp), np.uint64(i)
        for _ in range(rounds):
            u0, w = _step(data, w, slots, out, ctx, o, u0, ks, ms, mm)
            u1, w = _step(data, w, slots, out, ctx, o + _U1, u1, ks, ms, mm)
            u2, w = _step(data, w, slots, out, ctx, o + _U2, u2, ks, ms, mm)
            u3, w = _step(data, w, slots, out, ctx, o + _U3, u3, ks, ms, mm)
            o += _U4
        wp, i = np.int64(w), np.int64(o)
    x0, x1, x2, x3 = np.int64(u0), np.int64(u1), np.int64(u2), np.int64(u3)
    x[0], x[1], x[2], x[3] = x0, x1, x2, x3
    while i < n:  # the tail, with checks
        lane = i & 3
        sv = np.int64(out[i])
        c = ((sv & 3) << k) | ((np.int64(ctx[i]) >> (7 - k)) & ((1 << k) - 1))
        e = np.int64(slots[(c << RANS_SCALE_BITS) | (x[lane] & SLOT_MASK)])
        xl = ((e >> 8) & 0xFFF) * (x[lane] >> RANS_SCALE_BITS) + (x[lane] & SLOT_MASK) - (e >> 20)
        out[i] = (e - (sv >> 2)) & 0xFF
        if xl < RANS_L:
            if wp + 2 <= end:
                xl = (xl << 16) | np.int64(data[wp]) | (np.int64(data[wp + 1]) << 8)
            wp += 2
        x[lane] = xl
        i += 1
    if wp != end or x[0] != RANS_L or x[1] != RANS_L or x[2] != RANS_L or x[3] != RANS_L:
        return ERR_STREAM
    return 0


@njit(cache=True, nogil=True, inline="always")
def _step(data, w, slots, out, ctx, o, u, ks, ms, mm):
    """One symbol of one lane in the fast loop (room for the word is guaranteed by the caller)."""
    sv = np.uint64(out[o])
    c = ((sv & _U3) << ks) | ((np.uint64(ctx[o]) >> ms) & mm)
    g = np.uint64(slots[(c << _UBITS) | (u & _UMASK)])
    u = ((g >> _U8) & _U4095) * (u >> _UBITS) + (u & _UMASK) - (g >> _U20)
    out[o] = (g - (sv >> _U2)) & _U255
    r = u < _UL
    v = (u << _U16) | (np.uint64(data[w]) | (np.uint64(data[w + _U1]) << _U8))
    u = v if r else u
    w += np.uint64(r) << _U1
    return u, w
