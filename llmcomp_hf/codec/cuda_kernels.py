"""CUDA kernels shared by both coders: section parsing, plane merge and the sum32 checksum.

Imported lazily by :mod:`llmcomp_hf.codec.cuda` (never at ``import llmcomp_hf``), so importing
this module is what imports ``numba.cuda``; under ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run
in numba's CUDA simulator.

Device data layout (all arrays are flat):

- ``words``: the encoded ``data`` bytes viewed as little-endian uint32, zero-padded by >= 8 bytes,
  so every aligned word a kernel touches lies inside the allocation.
- per *unit* ``u = block * n_planes + plane``: ``modes[u]``, ``offs[u]`` (payload byte offset; for
  const sections the offset of the value byte), ``lens[u]`` (payload bytes), ``slots[u]``
  (scratch slot of a coded unit, -1 otherwise).
- ``scratch``: uint64 view of ``n_coded * block_size`` bytes; coded unit ``u`` owns the bytes
  ``[slots[u] * block_size, (slots[u] + 1) * block_size)``, split into 4 regions of
  ``block_size // 4`` bytes, one per Huffman sub-stream / rANS lane, each written whole words
  at a time by exactly one thread (no atomics, no races).
- ``status``: int64[4]; ``status[0]`` = max over failures of ``(UNIT_LIMIT - unit) << 4 | code``
  (so it names the first failing unit), ``status[1]`` = the checksum (read as uint64).
"""

from __future__ import annotations

import numpy as np
from numba import cuda
from numba.cuda import types

MODE_RAW, MODE_CONST, MODE_HUFFMAN, MODE_RANS = 0, 1, 2, 3
KIND_HALF, KIND_F32, KIND_BYTES = 0, 1, 2  # same values as llmcomp_hf.codec.planes

# Error codes (status[0] & 15); texts match the CPU decoder's.
ERR_TRUNCATED, ERR_TABLE, ERR_STREAM, ERR_MODE, ERR_TRAILING = 1, 2, 3, 4, 5
ERROR_TEXT = {
    ERR_TRUNCATED: "section runs past the end of the block",
    ERR_TABLE: "invalid code table",
    ERR_STREAM: "entropy-coded stream does not decode to its exact length",
    ERR_MODE: "unknown section mode",
    ERR_TRAILING: "bytes left over after the last plane",
}
UNIT_LIMIT = 1 << 40
N_SUB = 4  # sub-streams (Huffman) / lanes (rANS) per coded section in format v1

PARSE_THREADS = 128
MERGE_THREADS = 256

_M32 = np.uint64(0xFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B9)
_MIX = np.uint64(0x85EBCA6B)


@cuda.jit(device=True, inline=True)
def fail(status, unit, code):
    """Record an error for ``unit``; the lowest failing unit wins."""
    cuda.atomic.max(status, 0, ((UNIT_LIMIT - unit) << 4) | code)


@cuda.jit(device=True, inline=True)
def load_u8(words, pos):
    """Byte ``pos`` of the word array."""
    return (np.int64(words[pos >> 2]) >> ((pos & 3) * 8)) & 0xFF


@cuda.jit(device=True, inline=True)
def load_u32(words, pos):
    """Little-endian u32 at any byte offset (reads one aligned word past it when unaligned)."""
    sh = (pos & 3) * 8
    lo = np.int64(words[pos >> 2]) >> sh
    if sh == 0:
        return lo
    return (lo | (np.int64(words[(pos >> 2) + 1]) << (32 - sh))) & 0xFFFFFFFF


@cuda.jit(cache=True)
def parse_sections(words, index, numel, block_size, n_planes, modes, offs, lens, status):
    """One thread per block: walk its plane sections, fill the unit table, check every bound."""
    b = cuda.grid(1)
    if b >= index.shape[0] - 1:
        return
    pos = index[b]
    end = index[b + 1]
    n = min(block_size, numel - b * block_size)
    for p in range(n_planes):
        u = b * n_planes + p
        modes[u] = -1
        if pos >= end:
            fail(status, u, ERR_TRUNCATED)
            return
        mode = load_u8(words, pos)
        pos += 1
        if mode == MODE_RAW:
            size = n
        elif mode == MODE_CONST:
            size = 1
        elif mode == MODE_HUFFMAN or mode == MODE_RANS:
            if pos + 4 > end:
                fail(status, u, ERR_TRUNCATED)
                return
            size = load_u32(words, pos)
            pos += 4
        else:
            fail(status, u, ERR_MODE)
            return
        if pos + size > end:
            fail(status, u, ERR_TRUNCATED)
            return
        modes[u] = mode
        offs[u] = pos
        lens[u] = size
        pos += size
    if pos != end:
        fail(status, b * n_planes + n_planes - 1, ERR_TRAILING)


@cuda.jit(device=True, inline=True)
def plane_byte(words, modes, offs, slots, scratch, b, i, p, n_planes, block_size, numel):
    """Symbol ``i`` of plane ``p`` of block ``b``, from the data (raw/const) or the scratch."""
    u = b * n_planes + p
    m = modes[u]
    if m == MODE_RAW:
        return load_u8(words, offs[u] + i)
    if m == MODE_CONST:
        return load_u8(words, offs[u])
    quarter = block_size >> 2
    if m == MODE_HUFFMAN:
        n = min(block_size, numel - b * block_size)
        if n == block_size:
            pos = i
        else:  # sub-stream j holds symbols [j*q, (j+1)*q) at region j
            q = (n + 3) >> 2
            j = i // q
            pos = j * quarter + i - j * q
    else:  # rANS: lane i & 3 holds symbols i, i+4, ... at region i & 3
        pos = (i & 3) * quarter + (i >> 2)
    at = slots[u] * block_size + pos
    return (np.int64(scratch[at >> 3]) >> ((at & 7) * 8)) & 0xFF


@cuda.jit(device=True, inline=True)
def merged_word(words, modes, offs, slots, scratch, wi, kind, itemsize, n_planes, block_size, numel):
    """Output bytes ``[4*wi, 4*wi+4)`` as an int (bytes past the tensor are 0)."""
    val = np.int64(0)
    if kind == KIND_HALF:
        e = wi * 2
        b = e // block_size
        i = e - b * block_size
        for t in range(2):
            if e + t < numel:
                p0 = plane_byte(words, modes, offs, slots, scratch, b, i + t, 0, n_planes, block_size, numel)
                p1 = plane_byte(words, modes, offs, slots, scratch, b, i + t, 1, n_planes, block_size, numel)
                val |= ((p0 << 7) | ((p1 & 0x80) << 8) | (p1 & 0x7F)) << (16 * t)
    elif kind == KIND_F32:
        b = wi // block_size
        i = wi - b * block_size
        p0 = plane_byte(words, modes, offs, slots, scratch, b, i, 0, n_planes, block_size, numel)
        p1 = plane_byte(words, modes, offs, slots, scratch, b, i, 1, n_planes, block_size, numel)
        p2 = plane_byte(words, modes, offs, slots, scratch, b, i, 2, n_planes, block_size, numel)
        p3 = plane_byte(words, modes, offs, slots, scratch, b, i, 3, n_planes, block_size, numel)
        val = (p0 << 23) | ((p1 & 0x80) << 24) | ((p1 & 0x7F) << 16) | (p2 << 8) | p3
    else:  # byte grouping: byte t of an element is plane t; a word never straddles blocks
        nbytes = numel * itemsize
        e = (wi * 4) // itemsize
        b = e // block_size
        for t in range(4):
            at = wi * 4 + t
            if at < nbytes:
                el = at // itemsize
                val |= plane_byte(
                    words, modes, offs, slots, scratch, b, el - b * block_size, at - el * itemsize, n_planes, block_size, numel
                ) << (8 * t)
    return val


@cuda.jit(cache=True)
def merge_planes(
    words, modes, offs, slots, scratch, kind, itemsize, n_planes, block_size, numel, out_words, n_full, out_tail, csum, do_sum
):
    """Rebuild the output one u32 word per thread (grid-stride) and add up its sum32 terms.

    ``out_words[:n_full]`` is the word-aligned body of the output; ``out_tail`` its last
    ``numel * itemsize - 4 * n_full`` bytes (0..3). Both arrays are non-empty (dummies if unused).
    """
    partial = cuda.shared.array(MERGE_THREADS, types.uint64)
    tid = cuda.threadIdx.x
    n_words = (numel * itemsize + 3) >> 2
    tail = numel * itemsize - 4 * n_full
    acc = np.uint64(0)
    for wi in range(cuda.grid(1), n_words, cuda.gridsize(1)):
        val = merged_word(words, modes, offs, slots, scratch, wi, kind, itemsize, n_planes, block_size, numel)
        if wi < n_full:
            out_words[wi] = np.uint32(val & 0xFFFFFFFF)
        else:  # the last, partial word of a tensor whose size is not a multiple of 4 bytes
            for t in range(tail):
                out_tail[t] = np.uint8((val >> (8 * t)) & 0xFF)
        if do_sum:
            key = (np.uint64(wi) * _GOLDEN) & _M32
            acc += ((np.uint64(val) ^ key) * _MIX) & _M32
    if do_sum:
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
