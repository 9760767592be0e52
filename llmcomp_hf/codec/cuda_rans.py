"""CUDA rANS decoder for coded plane sections (docs/format.md, mode 3).

Same unit/scratch conventions as :mod:`llmcomp_hf.codec.cuda_huffman`: ``UNITS`` sections per
CUDA block, four threads per section, thread ``j`` running lane ``j`` (symbols ``i`` with
``i & 3 == j``) and writing them, in order, to scratch region ``j``.

The four lanes share one 16-bit word stream, consumed in symbol order. Each round (symbols
``4r .. 4r+3``) every lane decodes one symbol and publishes whether it needs a word; after a
block barrier, lane ``j`` takes the word at ``wp + 2 * (needs of lanes < j)`` and every lane
advances ``wp`` by all the needs. The flag array is double-buffered by round parity, so one
barrier per round suffices. Reads are bounded by the section end; at the end every lane must be
back at ``2**16`` and every word consumed, exactly as in the CPU decoder.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from llmcomp_hf.codec.cuda_huffman import UNITS, THREADS, _bitmap_count
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

SLOTS = 4096
SCALE_BITS = 12
RANS_L = 1 << 16
_SH_TABLE = UNITS * SLOTS  # shared-array sizes: plain module constants (literal shapes)
_SH_SYMS = UNITS * 256
_SH_SPAN = UNITS * 2
_SH_NEED = 2 * THREADS


@cuda.jit(device=True)
def _rans_header(words, pos, end, g, syms, freq, cum, ks, wspan):
    """Parse a rANS payload header into the unit's shared tables; 0 or an error code."""
    if pos + 32 > end:
        return ERR_TRUNCATED
    k = _bitmap_count(words, pos)
    if k < 2:
        return ERR_TABLE
    fp = pos + 32
    if fp + 2 * k > end:
        return ERR_TRUNCATED
    c = 0
    j = 0
    for s in range(256):
        if (load_u8(words, pos + (s >> 3)) >> (s & 7)) & 1:
            f = load_u8(words, fp + 2 * j) | (load_u8(words, fp + 2 * j + 1) << 8)
            if f == 0 or c + f > SLOTS:
                return ERR_TABLE
            syms[g * 256 + j] = s
            freq[g * 256 + s] = f
            cum[g * 256 + s] = c
            c += f
            j += 1
    if c != SLOTS:
        return ERR_TABLE
    sp = fp + 2 * k
    if sp + 16 > end or ((end - sp) & 1) != 0:
        return ERR_TRUNCATED
    for lane in range(4):
        if load_u32(words, sp + 4 * lane) < RANS_L:
            return ERR_STREAM
    ks[g] = k
    wspan[g * 2] = sp
    wspan[g * 2 + 1] = end
    return 0


@cuda.jit(cache=True)
def rans_decode(words, units, offs, lens, slots, n_planes, block_size, numel, scratch, status):
    """Decode the rANS sections ``units[...]`` into their scratch slots (THREADS per block)."""
    table = cuda.shared.array(_SH_TABLE, types.uint8)
    syms = cuda.shared.array(_SH_SYMS, types.uint8)
    freq = cuda.shared.array(_SH_SYMS, types.uint16)
    cum = cuda.shared.array(_SH_SYMS, types.uint16)
    ks = cuda.shared.array(UNITS, types.int32)
    wspan = cuda.shared.array(_SH_SPAN, types.int64)
    ok = cuda.shared.array(UNITS, types.int32)
    need = cuda.shared.array(_SH_NEED, types.int32)
    tid = cuda.threadIdx.x
    g = tid // N_SUB
    j = tid - g * N_SUB
    k = cuda.blockIdx.x * UNITS + g
    u = units[k] if k < units.shape[0] else -1
    if j == 0:
        ok[g] = 0
        if u >= 0:
            err = _rans_header(words, offs[u], offs[u] + lens[u], g, syms, freq, cum, ks, wspan)
            if err == 0:
                ok[g] = 1
            else:
                fail(status, u, err)
    cuda.syncthreads()
    live = u >= 0 and ok[g] == 1
    n = 0
    x = np.int64(0)
    wp = np.int64(0)
    wend = np.int64(0)
    out = np.int64(0)
    if live:
        for r in range(ks[g]):
            s = np.int64(syms[g * 256 + r])
            c0 = np.int64(cum[g * 256 + s])
            for t in range(c0 + j, c0 + freq[g * 256 + s], N_SUB):
                table[g * SLOTS + t] = s
        b = u // n_planes
        n = min(block_size, numel - b * block_size)
        x = load_u32(words, wspan[g * 2] + 4 * j)
        wp = wspan[g * 2] + 16
        wend = wspan[g * 2 + 1]
        out = (slots[u] * block_size + j * (block_size >> 2)) >> 3
    cuda.syncthreads()
    mine = (n - j + 3) >> 2 if n > j else 0  # symbols of this lane
    acc = np.int64(0)
    for r in range(block_size >> 2):  # same trip count in every thread: barriers stay uniform
        nd = 0
        if r < mine:
            slot = x & (SLOTS - 1)
            s = np.int64(table[_U(g * SLOTS + slot)])
            x = np.int64(freq[_U(g * 256 + s)]) * (x >> SCALE_BITS) + slot - np.int64(cum[_U(g * 256 + s)])
            nd = 1 if x < RANS_L else 0
            acc |= np.int64(s) << ((r & 7) * 8)
            if (r & 7) == 7 or r == mine - 1:
                scratch[_U(out + (r >> 3))] = np.uint64(acc)
                acc = np.int64(0)
        half = (r & 1) * THREADS
        need[half + tid] = nd
        cuda.syncthreads()
        if live:
            lo = half + g * N_SUB
            before = 0
            for m in range(j):
                before += need[lo + m]
            total = need[lo] + need[lo + 1] + need[lo + 2] + need[lo + 3]
            if nd:
                at = wp + 2 * before
                if at + 2 <= wend:
                    x = (x << 16) | (load_u32(words, at) & 0xFFFF)
            wp += 2 * total
    if live and (x != RANS_L or wp != wend):
        fail(status, u, ERR_STREAM)
