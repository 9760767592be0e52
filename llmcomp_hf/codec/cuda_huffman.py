"""CUDA Huffman decoder for coded plane sections (docs/format.md, mode 2).

The kernel takes a list of coded units (see :mod:`llmcomp_hf.codec.cuda_kernels` for the unit
table and scratch layout) and gives each CUDA block ``UNITS`` of them, four threads per unit:

1. thread 0 of each unit parses the payload header (bitmap, code lengths, stream lengths) and
   validates it against the section end;
2. the unit's four threads build its decode table in shared memory: a 2048-entry LUT of
   ``symbol | length << 8`` indexed by the next 11 stream bits in stream (LSB-first) order, so
   decoding needs no bit reversal;
3. thread ``j`` decodes sub-stream ``j`` into scratch region ``j``, eight symbols per 64-bit store.

Reads past a stream's end yield zeros and are counted; the consumed bit count must round up to
the stream's byte length exactly (as in the CPU decoder). Failures go to ``status``.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from llmcomp_hf.codec.cuda_kernels import (
    ERR_STREAM,
    ERR_TABLE,
    ERR_TRUNCATED,
    N_SUB,
    _U,
    fail,
    load_u8,
    load_u32,
    types,
)

UNITS = 8  # coded sections per CUDA block
THREADS = UNITS * N_SUB
LUT_BITS = 11
LUT_SIZE = 1 << LUT_BITS
# shared-array sizes must be plain module constants (numba needs literal shapes)
_SH_LUT = UNITS * LUT_SIZE
_SH_SYMS = UNITS * 256
_SH_LEN = UNITS * 12
_SH_STARTS = UNITS * 5


@cuda.jit(device=True, inline=True)
def _bitmap_count(words, pos):
    k = 0
    for t in range(8):
        k += cuda.popc(np.uint32(load_u32(words, pos + 4 * t)))
    return k


@cuda.jit(device=True)
def _huffman_header(words, pos, end, g, syms, first, cnt, base, starts):
    """Parse a Huffman payload header into the unit's shared tables; 0 or an error code."""
    if pos + 32 > end:
        return ERR_TRUNCATED
    k = _bitmap_count(words, pos)
    if k < 2:
        return ERR_TABLE
    lp = pos + 32
    if lp + (k + 1) // 2 > end:
        return ERR_TRUNCATED
    c = g * 12
    for ln in range(12):
        cnt[c + ln] = 0
    kraft = 0
    j = 0
    for s in range(256):
        if (load_u8(words, pos + (s >> 3)) >> (s & 7)) & 1:
            ln = (load_u8(words, lp + (j >> 1)) >> (4 * (j & 1))) & 15
            if ln == 0 or ln > LUT_BITS:
                return ERR_TABLE
            cnt[c + ln] += 1
            kraft += 1 << (LUT_BITS - ln)
            j += 1
    if kraft != LUT_SIZE:  # only complete codes: every LUT window then decodes
        return ERR_TABLE
    code = 0
    idx = 0
    nxt = cuda.local.array(12, types.int32)
    for ln in range(1, 12):  # canonical codes: sorted by (length, symbol)
        first[c + ln] = code
        base[c + ln] = idx
        nxt[ln] = idx
        code = (code + cnt[c + ln]) << 1
        idx += cnt[c + ln]
    j = 0
    for s in range(256):
        if (load_u8(words, pos + (s >> 3)) >> (s & 7)) & 1:
            ln = (load_u8(words, lp + (j >> 1)) >> (4 * (j & 1))) & 15
            syms[g * 256 + nxt[ln]] = s
            nxt[ln] += 1
            j += 1
    hp = lp + (k + 1) // 2
    if hp + 12 > end:
        return ERR_TRUNCATED
    s0 = hp + 12
    s1 = s0 + load_u32(words, hp)
    s2 = s1 + load_u32(words, hp + 4)
    s3 = s2 + load_u32(words, hp + 8)
    if s1 > end or s2 > end or s3 > end:
        return ERR_TRUNCATED
    starts[g * 5] = s0
    starts[g * 5 + 1] = s1
    starts[g * 5 + 2] = s2
    starts[g * 5 + 3] = s3
    starts[g * 5 + 4] = end
    return 0


@cuda.jit(cache=True)
def huffman_decode(words, units, offs, lens, slots, n_planes, block_size, numel, scratch, status):
    """Decode the Huffman sections ``units[...]`` into their scratch slots (THREADS per block)."""
    lut = cuda.shared.array(_SH_LUT, types.uint16)
    syms = cuda.shared.array(_SH_SYMS, types.uint8)
    first = cuda.shared.array(_SH_LEN, types.int32)
    cnt = cuda.shared.array(_SH_LEN, types.int32)
    base = cuda.shared.array(_SH_LEN, types.int32)
    starts = cuda.shared.array(_SH_STARTS, types.int64)
    ok = cuda.shared.array(UNITS, types.int32)
    tid = cuda.threadIdx.x
    g = tid // N_SUB
    j = tid - g * N_SUB
    k = cuda.blockIdx.x * UNITS + g
    u = units[k] if k < units.shape[0] else -1
    if j == 0:
        ok[g] = 0
        if u >= 0:
            err = _huffman_header(words, offs[u], offs[u] + lens[u], g, syms, first, cnt, base, starts)
            if err == 0:
                ok[g] = 1
            else:
                fail(status, u, err)
    cuda.syncthreads()
    live = u >= 0 and ok[g] == 1
    if live:
        c = g * 12
        for ln in range(1, 12):  # fill every window whose first ln bits are a code (bit-reversed)
            for r in range(cnt[c + ln]):
                entry = np.int64(syms[g * 256 + base[c + ln] + r]) | (ln << 8)
                rev = np.int64(cuda.brev(np.uint32(first[c + ln] + r))) >> (32 - ln)
                for m in range(j, 1 << (LUT_BITS - ln), N_SUB):
                    lut[g * LUT_SIZE + rev + (m << ln)] = entry
    cuda.syncthreads()
    if not live:
        return
    b = u // n_planes
    n = min(block_size, numel - b * block_size)
    q = (n + 3) >> 2
    count = max(0, min(q, n - j * q))
    s = starts[g * 5 + j]
    e = starts[g * 5 + j + 1]
    w0 = s >> 2
    w = w0
    buf = np.int64(words[w]) if w * 4 < e else np.int64(0)
    buf >>= (s & 3) * 8
    nbits = 32 - (s & 3) * 8
    w += 1
    out = (slots[u] * block_size + j * (block_size >> 2)) >> 3
    acc = np.int64(0)
    lut_base = g * LUT_SIZE
    for t in range(count):
        if nbits < LUT_BITS:
            if w * 4 < e:
                buf |= np.int64(words[_U(w)]) << nbits
            nbits += 32
            w += 1
        ent = np.int64(lut[_U(lut_base + (buf & (LUT_SIZE - 1)))])
        ln = ent >> 8
        buf >>= ln
        nbits -= ln
        acc |= (ent & 0xFF) << ((t & 7) * 8)
        if (t & 7) == 7:
            scratch[_U(out + (t >> 3))] = np.uint64(acc)
            acc = np.int64(0)
    if count & 7:
        scratch[out + (count >> 3)] = np.uint64(acc)
    consumed = (w - w0) * 32 - (s & 3) * 8 - nbits
    if (consumed + 7) // 8 != e - s:
        fail(status, u, ERR_STREAM)
