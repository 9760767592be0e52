"""CUDA kernels and helpers shared by every stage: constants, byte loads, section parsing.

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

try:  # numba-cuda >= 0.2x has its own type system; older releases use numba's
    from numba.cuda import types

    types.uint16
except (ImportError, AttributeError):
    from numba import types

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


_U = np.uint64  # unsigned indices: numba skips its negative-index fix-up (hot loops)


@cuda.jit(device=True, inline=True)
def fail(status, unit, code):
    """Record an error for ``unit``; the lowest failing unit wins."""
    cuda.atomic.max(status, 0, ((UNIT_LIMIT - unit) << 4) | code)


@cuda.jit(device=True, inline=True)
def load_u8(words, pos):
    """Byte ``pos`` of the word array."""
    return (np.int64(words[_U(pos >> 2)]) >> ((pos & 3) * 8)) & 0xFF


@cuda.jit(device=True, inline=True)
def load_u32(words, pos):
    """Little-endian u32 at any byte offset (reads one aligned word past it when unaligned)."""
    sh = (pos & 3) * 8
    lo = np.int64(words[_U(pos >> 2)]) >> sh
    if sh == 0:
        return lo
    return (lo | (np.int64(words[_U((pos >> 2) + 1)]) << (32 - sh))) & 0xFFFFFFFF


@cuda.jit(device=True, inline=True)
def load_u64(words, pos):
    """Little-endian 8 bytes at any byte offset, as an int64 bit pattern."""
    sh = (pos & 3) * 8
    w = pos >> 2
    lo = np.int64(words[_U(w)]) | (np.int64(words[_U(w + 1)]) << 32)
    if sh == 0:
        return lo
    return ((lo >> sh) & ((np.int64(1) << (64 - sh)) - 1)) | (np.int64(words[_U(w + 2)]) << (64 - sh))


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
