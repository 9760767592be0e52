"""rANS with context (docs/format.md, mode 4): plane 0 of a float coded with 2**k frequency tables.

The table of element ``i`` is chosen by the top ``k`` mantissa bits of its plane-1 byte
(``ctx = (p1 >> (7 - k)) & (2**k - 1)``), so the decoder needs plane 1 first. Tables are stored
compactly (exp-Golomb codes over the span of present symbols, one frequency position implied by
the sum of 4096) and a section may instead refer to the tables of an earlier block of its group of
16. Lanes, renormalisation and checks are mode 3's; final states below 2**24 take 3 bytes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from llmcomp_hf.codec.models import RANS_SCALE, RANS_SCALE_BITS
from llmcomp_hf.codec.planes import KIND_HALF

MAX_CTX_BITS = 3  # the format's limit
ENCODER_MAX_CTX_BITS = 3  # rans-ctx is opt-in: the best ratio, decode ~20% slower than k <= 1
N_CTX = 1 << MAX_CTX_BITS
RANS_L = 1 << 16
STATE3_LIMIT = 1 << 24  # final states below this are stored in 3 bytes
SLOT_MASK = RANS_SCALE - 1
ERR_TRUNCATED, ERR_TABLE, ERR_STREAM = -1, -2, -3
# Fast-loop constants: unsigned, so numba emits no wraparound code for the array indices.
_U1, _U2, _U3, _U4, _U8, _U16, _U20 = (np.uint64(v) for v in (1, 2, 3, 4, 8, 16, 20))
_U255, _U4095 = np.uint64(255), np.uint64(0xFFF)
_UBITS, _UMASK, _UL = np.uint64(RANS_SCALE_BITS), np.uint64(SLOT_MASK), np.uint64(RANS_L)
MAX_ORDER = 12  # largest exp-Golomb order of the table codes
MAX_ZEROS = 13  # longest zero prefix of a table code (values < 2**14)
MAX_SKIP = 64  # the implied frequency's position (6 bits of the first head byte)
TABLE_HEAD = 4  # k | skip << 2, first symbol, symbol count - 1, the two exp-Golomb orders
TABLE_MAX_BYTES = TABLE_HEAD + (N_CTX * 256 * (2 * MAX_ZEROS + 1 + MAX_ORDER) + 7) // 8
MEMO_BYTES = 2 + TABLE_MAX_BYTES  # u16 length + the bytes of the tables now built
COST_ONE = 1 << 16  # fixed-point unit of the cost estimates (1 bit)
# COST[f]: -log2(f / 4096) bits in 1/65536 units. Built once with numpy and shared by the kernels
# and the reference encoder, so both take the same (integer) decisions.
COST = np.round(np.log2(RANS_SCALE / np.maximum(np.arange(RANS_SCALE + 1), 1)) * COST_ONE).astype(np.int64)


@njit(cache=True, nogil=True)
def ctx_histogram(words: np.ndarray, kind: int, start: int, n: int, hist: np.ndarray) -> None:
    """Add the counts of (3-bit context, plane-0 symbol) of elements ``[start, start+n)`` to ``hist[8, 256]``."""
    w = words[start : start + n]
    if kind == KIND_HALF:
        for i in range(n):
            x = np.uint32(w[i])
            hist[(x >> np.uint32(4)) & np.uint32(7), (x >> np.uint32(7)) & np.uint32(0xFF)] += 1
    else:
        for i in range(n):
            x = np.uint32(w[i])
            hist[(x >> np.uint32(20)) & np.uint32(7), (x >> np.uint32(23)) & np.uint32(0xFF)] += 1


@njit(cache=True, nogil=True)
def fold(hist: np.ndarray, k: int) -> np.ndarray:
    """Counts per k-bit context (int64[2**k, 256]) from the 3-bit context histogram."""
    out = np.zeros((1 << k, 256), np.int64)
    for c in range(N_CTX):
        out[c >> (MAX_CTX_BITS - k)] += hist[c]
    return out


@njit(cache=True, nogil=True)
def fit_frequencies(counts: np.ndarray, total: int) -> np.ndarray:
    """Frequencies summing to 4096, each present symbol >= 1, that minimise the COST of ``counts``.

    Starts from the rounded-down shares and moves one unit at a time to (or from) the symbol
    where it saves (costs) the most; the cost is convex in each frequency, so this is optimal.
    Integer costs: the reference encoder takes the same steps.
    """
    freq = np.zeros(256, np.int64)
    used = 0
    for s in range(256):
        if counts[s] > 0:
            freq[s] = max(1, (counts[s] * RANS_SCALE) // total)
            used += freq[s]
    while used != RANS_SCALE:
        pick, pick_gain = -1, np.int64(0)
        for s in range(256):
            c = counts[s]
            if c == 0:
                continue
            if used < RANS_SCALE:
                gain = c * (COST[freq[s]] - COST[freq[s] + 1])  # bits saved by one more unit
            elif freq[s] > 1:
                gain = -c * (COST[freq[s] - 1] - COST[freq[s]])  # minus the bits one unit less costs
            else:
                continue
            if pick < 0 or gain > pick_gain:
                pick, pick_gain = s, gain
        if used < RANS_SCALE:
            freq[pick] += 1
            used += 1
        else:
            freq[pick] -= 1
            used -= 1
    return freq


@njit(cache=True, nogil=True)
def tables(counts: np.ndarray, present: np.ndarray) -> np.ndarray:
    """One frequency table per context (int64[2**k, 256]), each summing to 4096 with 2..k symbols.

    Only symbols in ``present`` (>= 2 of them, a superset of every context's symbols) get a
    frequency; a context with fewer than 2 symbols gets 4095 on its symbol (or the first present
    one) and 1 on the first other present symbol, so every frequency stays below 4096.
    """
    n_ctx = counts.shape[0]
    freq = np.zeros((n_ctx, 256), np.int64)
    first, second = -1, -1
    for s in range(256):
        if present[s] > 0:
            if first < 0:
                first = s
            elif second < 0:
                second = s
    for c in range(n_ctx):
        total, k, top = 0, 0, first
        for s in range(256):
            if counts[c, s] > 0:
                total += counts[c, s]
                k += 1
                top = s
        if k >= 2:
            freq[c] = fit_frequencies(counts[c], total)
        else:
            freq[c, top] = RANS_SCALE - 1
            freq[c, second if top == first else first] = 1
    return freq


@njit(cache=True, nogil=True)
def _span(present: np.ndarray) -> tuple[int, int]:
    """(first symbol, count) of the range from the lowest to the highest present symbol."""
    lo, hi = -1, -1
    for s in range(256):
        if present[s] > 0:
            if lo < 0:
                lo = s
            hi = s
    return lo, hi - lo + 1


@njit(cache=True, nogil=True)
def _eg_bits(v: int, r: int) -> int:
    """Length of the order-``r`` exp-Golomb code of ``v >= 0``."""
    u = (v >> r) + 1
    nb = 0
    while u >> nb:
        nb += 1
    return 2 * nb - 1 + r


@njit(cache=True, nogil=True)
def _zigzag(d: int) -> int:
    return 2 * d if d >= 0 else -2 * d - 1


@njit(cache=True, nogil=True)
def _orders(freq: np.ndarray, lo: int, m: int) -> tuple[int, int, int, int]:
    """(skip, r0, r1, bits): the position (< MAX_SKIP) whose frequencies are left implied, the
    exp-Golomb orders of context 0 and of the deltas, and the bits of the codes; the fewest bits
    (ties: smallest skip, then smallest orders)."""
    n_ctx = freq.shape[0]
    b0 = np.zeros((MAX_ORDER + 1, m), np.int64)  # bits of position j's code(s) at order r
    b1 = np.zeros((MAX_ORDER + 1, m), np.int64)
    for r in range(MAX_ORDER + 1):
        for j in range(m):
            b0[r, j] = _eg_bits(freq[0, lo + j], r)
            for c in range(1, n_ctx):
                b1[r, j] += _eg_bits(_zigzag(freq[c, lo + j] - freq[c - 1, lo + j]), r)
    t0 = b0.sum(axis=1)
    t1 = b1.sum(axis=1)
    best, skip, r0, r1 = -1, 0, 0, 0
    for j in range(min(m, MAX_SKIP)):
        c0, q0 = -1, 0
        for r in range(MAX_ORDER + 1):
            t = t0[r] - b0[r, j]
            if c0 < 0 or t < c0:
                c0, q0 = t, r
        c1, q1 = 0, 0
        if n_ctx > 1:
            c1 = -1
            for r in range(MAX_ORDER + 1):
                t = t1[r] - b1[r, j]
                if c1 < 0 or t < c1:
                    c1, q1 = t, r
        if best < 0 or c0 + c1 < best:
            best, skip, r0, r1 = c0 + c1, j, q0, q1
    return skip, r0, r1, best


@njit(cache=True, nogil=True)
def table_bytes(freq: np.ndarray, present: np.ndarray) -> int:
    """Stored size of the tables (docs/format.md, mode 4): 4 bytes, then the bit-packed frequencies."""
    lo, m = _span(present)
    return TABLE_HEAD + (_orders(freq, lo, m)[3] + 7) // 8


@njit(cache=True, nogil=True)
def cost(counts: np.ndarray, freq: np.ndarray) -> int:
    """Estimated coded size of ``counts`` under ``freq`` in 1/65536 bits (COST units)."""
    total = 0
    for c in range(counts.shape[0]):
        for s in range(256):
            if counts[c, s] > 0:
                total += counts[c, s] * COST[freq[c, s]]
    return total


@njit(cache=True, nogil=True)
def cost_if_codable(counts: np.ndarray, freq: np.ndarray) -> int:
    """``cost(counts, freq)``, or -1 when a symbol with a count has frequency 0 in its context."""
    total = 0
    for c in range(counts.shape[0]):
        for s in range(256):
            if counts[c, s] > 0:
                if freq[c, s] == 0:
                    return -1
                total += counts[c, s] * COST[freq[c, s]]
    return total


@njit(cache=True, nogil=True)
def write_tables(freq: np.ndarray, k: int, present: np.ndarray, out: np.ndarray, pos: int) -> int:
    """Write the tables of ``freq`` (symbols: the range spanned by ``present``) at ``out[pos]``;
    return the new pos."""
    lo, m = _span(present)
    skip, r0, r1, _ = _orders(freq, lo, m)
    out[pos] = k | (skip << 2)
    out[pos + 1] = lo
    out[pos + 2] = m - 1
    out[pos + 3] = r0 | (r1 << 4)
    pos += TABLE_HEAD
    acc, nbits = np.int64(0), 0  # bits not yet written, LSB first
    for c in range(freq.shape[0]):  # 2**k tables (mode 4), 4 * 2**k (mode 5)
        r = r0 if c == 0 else r1
        for j in range(lo, lo + m):
            if j == lo + skip:
                continue
            v = freq[0, j] if c == 0 else _zigzag(freq[c, j] - freq[c - 1, j])
            u = (v >> r) + 1
            nb = 0
            while u >> nb:
                nb += 1
            nbits += nb - 1  # nb - 1 zero bits, then u and the low r bits of v, MSB first
            for t in range(nb - 1, -1, -1):
                acc |= ((u >> t) & 1) << nbits
                nbits += 1
            for t in range(r - 1, -1, -1):
                acc |= ((v >> t) & 1) << nbits
                nbits += 1
            while nbits >= 8:
                out[pos] = acc & 0xFF
                pos += 1
                acc >>= 8
                nbits -= 8
    if nbits > 0:
        out[pos] = acc & 0xFF
        pos += 1
    return pos


@njit(cache=True, nogil=True)
def encode_payload(p0: np.ndarray, p1: np.ndarray, n: int, k: int, freq: np.ndarray, ref: int, present: np.ndarray,
                   out: np.ndarray, pos: int, words: np.ndarray) -> int:
    """Write a mode-4 payload at ``out[pos]``: ref byte (ref | short-state flags << 4), tables when
    ``ref == 0``, states (3 or 4 bytes each), words.

    ``words`` is scratch of >= n+8 u16. Returns the payload length.
    """
    start = pos
    out[pos] = ref
    pos += 1
    if ref == 0:
        pos = write_tables(freq, k, present, out, pos)
    n_ctx = 1 << k
    cum = np.zeros((n_ctx, 256), np.int64)
    for c in range(n_ctx):
        acc = 0
        for s in range(256):
            cum[c, s] = acc
            acc += freq[c, s]
    shift, mask = 7 - k, n_ctx - 1
    x = np.full(4, RANS_L, np.int64)
    w = words.shape[0]
    for i in range(n - 1, -1, -1):
        lane = i & 3
        c = (p1[i] >> shift) & mask
        s = p0[i]
        f = freq[c, s]
        xi = x[lane]
        if xi >= f << (32 - RANS_SCALE_BITS):
            w -= 1
            words[w] = xi & 0xFFFF
            xi >>= 16
        x[lane] = ((xi // f) << RANS_SCALE_BITS) + (xi % f) + cum[c, s]
    for lane in range(4):  # a state below 2**24 takes 3 bytes, flagged in bit 4 + lane of the ref byte
        nb = 4
        if x[lane] < STATE3_LIMIT:
            nb = 3
            out[start] |= 1 << (4 + lane)
        for b in range(nb):
            out[pos + b] = (x[lane] >> (8 * b)) & 0xFF
        pos += nb
    for i in range(w, words.shape[0]):
        out[pos] = words[i] & 0xFF
        out[pos + 1] = words[i] >> 8
        pos += 2
    return pos - start


@njit(cache=True, nogil=True)
def table_span(data: np.ndarray, index: np.ndarray, b: int, pos: int, end: int) -> tuple[int, int]:
    """(start, end) of the tables a mode-4 payload ``data[pos:end]`` of block ``b`` uses, or (err, 0).

    ``ref == 0``: the tables follow the ref byte. ``ref`` in 1..15: they are in the plane-0
    section of block ``b - ref`` (same group of 16), which must be a mode-4 section with ref 0.
    """
    if pos >= end:
        return ERR_TRUNCATED, 0
    ref = np.int64(data[pos] & 15)
    if ref == 0:
        return pos + 1, end
    if ref > b % 16:
        return ERR_TABLE, 0
    lo, hi = index[b - ref], index[b - ref + 1]
    if lo + 6 > hi or data[lo] != 4 or data[lo + 5] & 15 != 0:
        return ERR_TABLE, 0
    size = np.int64(data[lo + 1]) | (np.int64(data[lo + 2]) << 8) | (np.int64(data[lo + 3]) << 16) | (np.int64(data[lo + 4]) << 24)
    if lo + 5 + size > hi:
        return ERR_TABLE, 0
    return lo + 6, lo + 5 + size


@njit(cache=True, nogil=True)
def _read_code(data: np.ndarray, q: int, end: int, bit: int, r: int) -> tuple[int, int]:
    """Order-``r`` exp-Golomb value at bit ``bit`` of ``data[q:end]``: (value or <0 error, next bit)."""
    z = 0
    while True:
        if q + (bit >> 3) >= end:
            return ERR_TRUNCATED, bit
        if (data[q + (bit >> 3)] >> (bit & 7)) & 1:
            break
        z += 1
        bit += 1
        if z > MAX_ZEROS:
            return ERR_TABLE, bit
    v = np.int64(0)
    for _ in range(z + 1 + r):
        if q + (bit >> 3) >= end:
            return ERR_TRUNCATED, bit
        v = (v << 1) | np.int64((data[q + (bit >> 3)] >> (bit & 7)) & 1)
        bit += 1
    # v holds u (z + 1 bits) then the r low bits: value = ((u - 1) << r) | low
    return v - (np.int64(1) << r), bit


@njit(cache=True, nogil=True)
def build_tables(data: np.ndarray, pos: int, end: int, slots: np.ndarray, memo: np.ndarray, extra: int = 0) -> tuple[int, int]:
    """Parse tables at ``data[pos:end]`` into ``slots[c*4096 + slot]`` (mode 3's entry layout).

    Returns (position after the tables or <0 error, k); there are ``2**(k + extra)`` tables
    (``extra``: 0 for mode 4, 2 for mode 5). ``memo`` (u8[MEMO_BYTES]) keeps the bytes of the
    tables now in ``slots``; the same leading bytes parse the same, so they skip the rebuild
    (``memo`` of fewer than 2 bytes: no memo).
    """
    known = np.int64(memo[0]) | (np.int64(memo[1]) << 8) if memo.shape[0] >= 2 else 0
    if known > 0 and pos + known <= end:
        same = True
        for j in range(known):
            if memo[2 + j] != data[pos + j]:
                same = False
                break
        if same:
            return pos + known, np.int64(data[pos] & 3)
    if pos + TABLE_HEAD > end:
        return ERR_TRUNCATED, 0
    k, skip = np.int64(data[pos] & 3), np.int64(data[pos] >> 2)
    lo, m = np.int64(data[pos + 1]), np.int64(data[pos + 2]) + 1
    r0, r1 = np.int64(data[pos + 3] & 15), np.int64(data[pos + 3] >> 4)
    if skip >= m or lo + m > 256 or r0 > MAX_ORDER or r1 > MAX_ORDER or (k + extra == 0 and r1 != 0):
        return ERR_TABLE, 0
    if memo.shape[0] >= 2:
        memo[0] = 0
        memo[1] = 0
    q = pos + TABLE_HEAD
    bit = 0
    prev = np.zeros(256, np.int64)
    for c in range(1 << (k + extra)):
        total = 0
        for j in range(m):
            if j == skip:
                continue
            v, bit = _read_code(data, q, end, bit, r0 if c == 0 else r1)
            if v < 0:
                return v, 0
            f = v if c == 0 else prev[j] + ((v >> 1) if v & 1 == 0 else -((v + 1) >> 1))
            if f < 0 or f >= RANS_SCALE:
                return ERR_TABLE, 0
            prev[j] = f
            total += f
        if total < 1 or total > RANS_SCALE:  # the implied frequency must be in 0..4095
            return ERR_TABLE, 0
        prev[skip] = RANS_SCALE - total
        cum = 0
        base = c << RANS_SCALE_BITS
        for j in range(m):
            f = prev[j]
            if f:
                slots[base + cum : base + cum + f] = np.uint32((lo + j) | (f << 8) | (cum << 20))
            cum += f
    q += (bit + 7) >> 3
    if bit & 7 and data[q - 1] >> (bit & 7):  # padding bits must be zero
        return ERR_TABLE, 0
    size = q - pos
    if 2 + size <= memo.shape[0]:
        memo[2 : 2 + size] = data[pos:q]
        memo[0] = size & 0xFF
        memo[1] = size >> 8
    return q, k


@njit(cache=True, nogil=True)
def _read_state(data, pos, nb):
    """Lane state of ``nb`` (3 or 4) bytes at ``data[pos]``; -1 when not canonical (a 4-byte state
    must be >= 2**24: smaller ones take 3 bytes)."""
    x = np.int64(data[pos]) | (np.int64(data[pos + 1]) << 8) | (np.int64(data[pos + 2]) << 16)
    if nb == 4:
        x |= np.int64(data[pos + 3]) << 24
        if x < STATE3_LIMIT:
            return -1
    return x


@njit(cache=True, nogil=True)
def decode_payload(data: np.ndarray, index: np.ndarray, b: int, pos: int, end: int, n: int, ctx: np.ndarray,
                   out: np.ndarray, slots: np.ndarray, memo: np.ndarray) -> int:
    """Decode the mode-4 payload ``data[pos:end]`` of block ``b`` into ``out[:n]``; 0 or <0 on error.

    ``ctx[:n]`` is the block's plane 1. Fast loop, then the checked tail, as in rans.decode_section.
    """
    t_lo, t_hi = table_span(data, index, b, pos, end)
    if t_lo < 0:
        return t_lo
    t_end, k = build_tables(data, t_lo, t_hi, slots, memo)
    if t_end < 0:
        return t_end
    flags = np.int64(data[pos] >> 4)  # lane j's state has 3 bytes when bit j is set
    if data[pos] & 15 != 0:  # tables of an earlier block: only the ref byte precedes the states
        t_end = pos + 1
    pos = t_end
    n0, n1, n2, n3 = 4 - (flags & 1), 4 - ((flags >> 1) & 1), 4 - ((flags >> 2) & 1), 4 - (flags >> 3)
    sb = n0 + n1 + n2 + n3
    if pos + sb > end or (end - pos - sb) & 1:
        return ERR_TRUNCATED
    # (ctx << 12) straight from the plane-1 byte: keep its top k mantissa bits, move them up.
    cmask = np.int64(((1 << k) - 1) << (7 - k))
    cshift = np.int64(5 + k)
    x0 = _read_state(data, pos, n0)
    x1 = _read_state(data, pos + n0, n1)
    x2 = _read_state(data, pos + n0 + n1, n2)
    x3 = _read_state(data, pos + n0 + n1 + n2, n3)
    if x0 < RANS_L or x1 < RANS_L or x2 < RANS_L or x3 < RANS_L:
        return ERR_STREAM
    wp = pos + sb
    i = 0
    # Unsigned fast loop in rounds with room, as in rans.decode_section.
    u0, u1, u2, u3 = np.uint64(x0), np.uint64(x1), np.uint64(x2), np.uint64(x3)
    um, us = np.uint64(cmask), np.uint64(cshift)
    while True:
        rounds = min((end - wp) >> 3, (n - i) >> 2)
        if rounds <= 0:
            break
        w, o = np.uint64(wp), np.uint64(i)
        for _ in range(rounds):
            g = np.uint64(slots[((np.uint64(ctx[o]) & um) << us) | (u0 & _UMASK)])
            u0 = ((g >> _U8) & _U4095) * (u0 >> _UBITS) + (u0 & _UMASK) - (g >> _U20)
            out[o] = g & _U255
            r = u0 < _UL
            v = (u0 << _U16) | (np.uint64(data[w]) | (np.uint64(data[w + _U1]) << _U8))
            u0 = v if r else u0
            w += np.uint64(r) << _U1
            g = np.uint64(slots[((np.uint64(ctx[o + _U1]) & um) << us) | (u1 & _UMASK)])
            u1 = ((g >> _U8) & _U4095) * (u1 >> _UBITS) + (u1 & _UMASK) - (g >> _U20)
            out[o + _U1] = g & _U255
            r = u1 < _UL
            v = (u1 << _U16) | (np.uint64(data[w]) | (np.uint64(data[w + _U1]) << _U8))
            u1 = v if r else u1
            w += np.uint64(r) << _U1
            g = np.uint64(slots[((np.uint64(ctx[o + _U2]) & um) << us) | (u2 & _UMASK)])
            u2 = ((g >> _U8) & _U4095) * (u2 >> _UBITS) + (u2 & _UMASK) - (g >> _U20)
            out[o + _U2] = g & _U255
            r = u2 < _UL
            v = (u2 << _U16) | (np.uint64(data[w]) | (np.uint64(data[w + _U1]) << _U8))
            u2 = v if r else u2
            w += np.uint64(r) << _U1
            g = np.uint64(slots[((np.uint64(ctx[o + _U3]) & um) << us) | (u3 & _UMASK)])
            u3 = ((g >> _U8) & _U4095) * (u3 >> _UBITS) + (u3 & _UMASK) - (g >> _U20)
            out[o + _U3] = g & _U255
            r = u3 < _UL
            v = (u3 << _U16) | (np.uint64(data[w]) | (np.uint64(data[w + _U1]) << _U8))
            u3 = v if r else u3
            w += np.uint64(r) << _U1
            o += _U4
        wp, i = np.int64(w), np.int64(o)
    x0, x1, x2, x3 = np.int64(u0), np.int64(u1), np.int64(u2), np.int64(u3)
    # The tail, with checks.
    while i < n:
        e = np.int64(slots[((np.int64(ctx[i]) & cmask) << cshift) | (x0 & SLOT_MASK)])
        x0 = ((e >> 8) & 0xFFF) * (x0 >> RANS_SCALE_BITS) + (x0 & SLOT_MASK) - (e >> 20)
        out[i] = e & 0xFF
        if x0 < RANS_L:
            if wp + 2 <= end:
                x0 = (x0 << 16) | np.int64(data[wp]) | (np.int64(data[wp + 1]) << 8)
            wp += 2
        if i + 1 >= n:
            break
        e = np.int64(slots[((np.int64(ctx[i + 1]) & cmask) << cshift) | (x1 & SLOT_MASK)])
        x1 = ((e >> 8) & 0xFFF) * (x1 >> RANS_SCALE_BITS) + (x1 & SLOT_MASK) - (e >> 20)
        out[i + 1] = e & 0xFF
        if x1 < RANS_L:
            if wp + 2 <= end:
                x1 = (x1 << 16) | np.int64(data[wp]) | (np.int64(data[wp + 1]) << 8)
            wp += 2
        if i + 2 >= n:
            break
        e = np.int64(slots[((np.int64(ctx[i + 2]) & cmask) << cshift) | (x2 & SLOT_MASK)])
        x2 = ((e >> 8) & 0xFFF) * (x2 >> RANS_SCALE_BITS) + (x2 & SLOT_MASK) - (e >> 20)
        out[i + 2] = e & 0xFF
        if x2 < RANS_L:
            if wp + 2 <= end:
                x2 = (x2 << 16) | np.int64(data[wp]) | (np.int64(data[wp + 1]) << 8)
            wp += 2
        if i + 3 >= n:
            break
        e = np.int64(slots[((np.int64(ctx[i + 3]) & cmask) << cshift) | (x3 & SLOT_MASK)])
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
