"""CUDA plane merge: rebuild elements from raw/const/decoded planes, write them, sum32 them.

One thread per *octet* of 8 elements (grid-stride). An octet never straddles a block (block
sizes are multiples of 64). In a full block, the fast path fetches each plane's 8 symbols with
one or a few wide loads (``plane8``), rearranges bytes in registers and writes ``2 * itemsize``
whole u32 words; octets of the last, partial block take the byte-by-byte path (``merged_word``), which also handles an output
whose size is not a multiple of 4 bytes. Every written word adds its sum32 term; a block-wide
tree reduction and one atomic per CUDA block give the tensor's checksum.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from llmcomp_hf.codec.cuda_kernels import (
    KIND_F32,
    KIND_HALF,
    MODE_CONST,
    MODE_HUFFMAN,
    MODE_RAW,
    _U,
    load_u8,
    load_u64,
    types,
)

MERGE_THREADS = 256
_M32 = np.uint64(0xFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B9)
_MIX1 = np.uint64(0x85EBCA6B)
_MIX2 = np.uint64(0xC2B2AE35)


@cuda.jit(device=True, inline=True)
def _term(wi, val):
    """sum32 term of output word ``wi`` with value ``val``: murmur3 fmix32(val ^ wi * golden)."""
    h = np.uint64(val & 0xFFFFFFFF) ^ ((np.uint64(wi) * _GOLDEN) & _M32)
    h ^= h >> np.uint64(16)
    h = (h * _MIX1) & _M32
    h ^= h >> np.uint64(13)
    h = (h * _MIX2) & _M32
    return h ^ (h >> np.uint64(16))


@cuda.jit(device=True, inline=True)
def plane8(words, modes, offs, slots, scratch, b, i, p, n_planes, block_size):
    """Symbols ``i .. i+7`` (``i % 8 == 0``) of plane ``p`` of the full block ``b``, packed."""
    u = b * n_planes + p
    m = modes[u]
    if m == MODE_RAW:
        return load_u64(words, offs[u] + i)
    if m == MODE_CONST:
        v = load_u8(words, offs[u])
        v |= v << 8
        v |= v << 16
        return v | (v << 32)
    base = slots[u] * block_size
    if m == MODE_HUFFMAN:
        return np.int64(scratch[_U((base + i) >> 3)])
    quarter = block_size >> 2  # rANS: symbol i + 4*m + lane is byte (i >> 2) + m of region lane
    v = np.int64(0)
    for lane in range(4):
        at = base + lane * quarter + (i >> 2)
        w = np.int64(scratch[_U(at >> 3)]) >> ((at & 7) * 8)
        v |= ((w & 0xFF) << (8 * lane)) | (((w >> 8) & 0xFF) << (8 * lane + 32))
    return v


@cuda.jit(device=True, inline=True)
def plane_byte(words, modes, offs, slots, scratch, b, i, p, n_planes, block_size, numel):
    """Symbol ``i`` of plane ``p`` of block ``b`` (any block, any ``i``)."""
    u = b * n_planes + p
    m = modes[u]
    if m == MODE_RAW:
        return load_u8(words, offs[u] + i)
    if m == MODE_CONST:
        return load_u8(words, offs[u])
    quarter = block_size >> 2
    if m == MODE_HUFFMAN:  # sub-stream j holds symbols [j*q, (j+1)*q) at region j
        q = (min(block_size, numel - b * block_size) + 3) >> 2
        j = i // q
        pos = j * quarter + i - j * q
    else:  # rANS lane i & 3 holds symbols i, i+4, ... at region i & 3
        pos = (i & 3) * quarter + (i >> 2)
    at = slots[u] * block_size + pos
    return (np.int64(scratch[at >> 3]) >> ((at & 7) * 8)) & 0xFF


@cuda.jit(device=True, inline=True)
def merged_word(words, modes, offs, slots, scratch, wi, kind, itemsize, n_planes, block_size, numel):
    """Output bytes ``[4*wi, 4*wi+4)`` as an int (bytes past the tensor are 0); slow path."""
    val = np.int64(0)
    nbytes = numel * itemsize
    for t in range(4):
        at = wi * 4 + t
        if at < nbytes:
            e = at // itemsize
            j = at - e * itemsize
            b = e // block_size
            i = e - b * block_size
            if kind == KIND_HALF:  # byte j of a 16-bit word from planes 0 and 1
                p0 = plane_byte(words, modes, offs, slots, scratch, b, i, 0, n_planes, block_size, numel)
                p1 = plane_byte(words, modes, offs, slots, scratch, b, i, 1, n_planes, block_size, numel)
                h = (p0 << 7) | ((p1 & 0x80) << 8) | (p1 & 0x7F)
                byte = (h >> (8 * j)) & 0xFF
            elif kind == KIND_F32:
                p0 = plane_byte(words, modes, offs, slots, scratch, b, i, 0, n_planes, block_size, numel)
                p1 = plane_byte(words, modes, offs, slots, scratch, b, i, 1, n_planes, block_size, numel)
                p2 = plane_byte(words, modes, offs, slots, scratch, b, i, 2, n_planes, block_size, numel)
                p3 = plane_byte(words, modes, offs, slots, scratch, b, i, 3, n_planes, block_size, numel)
                f = (p0 << 23) | ((p1 & 0x80) << 24) | ((p1 & 0x7F) << 16) | (p2 << 8) | p3
                byte = (f >> (8 * j)) & 0xFF
            else:  # byte grouping: byte j of an element is plane j
                byte = plane_byte(words, modes, offs, slots, scratch, b, i, j, n_planes, block_size, numel)
            val |= byte << (8 * t)
    return val


@cuda.jit(cache=True)
def merge_planes(
    words, modes, offs, slots, scratch, kind, itemsize, n_planes, block_size, bs_log2, numel,
    out_words, n_full, out_tail, csum, do_sum,
):  # fmt: skip
    """Write the output (``out_words[:n_full]`` u32 body + ``out_tail`` 0..3 bytes) and sum it.

    ``bs_log2`` is log2(block_size) when it is a power of two, else -1. ``out_words`` and
    ``out_tail`` are never empty (dummies when unused).
    """
    partial = cuda.shared.array(MERGE_THREADS, types.uint64)
    octs = cuda.local.array(8, types.int64)
    n_words = (numel * itemsize + 3) >> 2
    tail = numel * itemsize - 4 * n_full
    n_blocks = (numel + block_size - 1) // block_size
    last_full = n_blocks if numel % block_size == 0 else n_blocks - 1  # blocks < this are full
    per = 2 * itemsize  # output words per octet
    acc = np.uint64(0)
    for o in range(cuda.grid(1), (numel + 7) >> 3, cuda.gridsize(1)):
        e = o * 8
        b = e >> bs_log2 if bs_log2 >= 0 else e // block_size
        i = e - b * block_size
        w0 = o * per
        if b < last_full and kind == KIND_HALF:
            lo = plane8(words, modes, offs, slots, scratch, b, i, 0, n_planes, block_size)
            hi = plane8(words, modes, offs, slots, scratch, b, i, 1, n_planes, block_size)
            for m in range(4):
                val = np.int64(0)
                for t in range(2):
                    a = (lo >> (16 * m + 8 * t)) & 0xFF
                    c = (hi >> (16 * m + 8 * t)) & 0xFF
                    val |= ((a << 7) | ((c & 0x80) << 8) | (c & 0x7F)) << (16 * t)
                out_words[_U(w0 + m)] = np.uint32(val)
                if do_sum:
                    acc += _term(w0 + m, val)
        elif b < last_full and kind == KIND_F32:
            q0 = plane8(words, modes, offs, slots, scratch, b, i, 0, n_planes, block_size)
            q1 = plane8(words, modes, offs, slots, scratch, b, i, 1, n_planes, block_size)
            q2 = plane8(words, modes, offs, slots, scratch, b, i, 2, n_planes, block_size)
            q3 = plane8(words, modes, offs, slots, scratch, b, i, 3, n_planes, block_size)
            for m in range(8):
                s = 8 * m
                c = (q1 >> s) & 0xFF
                val = (((q0 >> s) & 0xFF) << 23) | ((c & 0x80) << 24) | ((c & 0x7F) << 16)
                val |= (((q2 >> s) & 0xFF) << 8) | ((q3 >> s) & 0xFF)
                out_words[_U(w0 + m)] = np.uint32(val)
                if do_sum:
                    acc += _term(w0 + m, val)
        elif b < last_full:  # byte grouping: byte j of element t is byte t of plane j's octet
            for j in range(itemsize):
                octs[j] = plane8(words, modes, offs, slots, scratch, b, i, j, n_planes, block_size)
            for m in range(per):
                val = np.int64(0)
                for t in range(4):
                    at = 4 * m + t
                    el = at // itemsize
                    val |= ((octs[at - el * itemsize] >> (8 * el)) & 0xFF) << (8 * t)
                out_words[_U(w0 + m)] = np.uint32(val)
                if do_sum:
                    acc += _term(w0 + m, val)
        else:  # the partial last block: byte by byte
            for wi in range(w0, min(w0 + per, n_words)):
                val = merged_word(words, modes, offs, slots, scratch, wi, kind, itemsize, n_planes, block_size, numel)
                if wi < n_full:
                    out_words[wi] = np.uint32(val)
                else:
                    for t in range(tail):
                        out_tail[t] = np.uint8((val >> (8 * t)) & 0xFF)
                if do_sum:
                    acc += _term(wi, val)
    if do_sum:
        tid = cuda.threadIdx.x
        partial[tid] = acc
        cuda.syncthreads()
        step = MERGE_THREADS // 2
        while step > 0:
            if tid < step:
                partial[tid] += partial[tid + step]
            cuda.syncthreads()
            step //= 2
        if tid == 0:
            cuda.atomic.add(csum, 0, partial[0])
