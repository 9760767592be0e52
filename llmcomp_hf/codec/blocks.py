"""Block drivers: split → model → code every plane of every block, in parallel, and back.

``encode_blocks`` and ``decode_blocks`` are the only parallel (``prange``) kernels of the CPU
codec. Errors inside kernels are returned per block (code, plane) and raised by api.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from llmcomp_hf.codec import huffman, rans
from llmcomp_hf.codec.checksum import sum32_range
from llmcomp_hf.codec.models import histogram, huffman_lengths, rans_frequencies
from llmcomp_hf.codec.planes import merge_block, split_block

MODE_RAW, MODE_CONST, MODE_HUFFMAN, MODE_RANS = 0, 1, 2, 3
CODER_IDS = {"raw": MODE_RAW, "huffman": MODE_HUFFMAN, "rans": MODE_RANS}
ERR_MODE = -4
ERR_TRAILING = -5
ERROR_TEXT = {
    huffman.ERR_TRUNCATED: "section runs past the end of the block",
    huffman.ERR_TABLE: "invalid code table",
    huffman.ERR_STREAM: "entropy-coded stream does not decode to its exact length",
    ERR_MODE: "unknown section mode",
    ERR_TRAILING: "bytes left over after the last plane",
}


@njit(cache=True, nogil=True)
def _put_u32(out, pos, v):
    for b in range(4):
        out[pos + b] = (v >> (8 * b)) & 0xFF


@njit(cache=True, nogil=True)
def encode_plane(plane, n, coder, max_payload, out, pos, scratch, words) -> int:
    """Encode one plane section at ``out[pos]``; return its size. Coded only if it beats ``max_payload``."""
    counts = histogram(plane, n)
    k = 0
    for s in range(256):
        if counts[s] > 0:
            k += 1
    if k == 1:
        out[pos] = MODE_CONST
        out[pos + 1] = plane[0]
        return 2
    if coder == MODE_HUFFMAN:
        lengths = huffman_lengths(counts)
        if huffman.encoded_size(counts, lengths, k) < max_payload:
            size = huffman.encode_section(plane, n, counts, lengths, out, pos + 5)
            out[pos] = MODE_HUFFMAN
            _put_u32(out, pos + 1, size)
            return size + 5
    elif coder == MODE_RANS:
        freq = rans_frequencies(counts, n)
        size = rans.encode_section(plane, n, counts, freq, scratch, 0, words)
        if size < max_payload:
            out[pos] = MODE_RANS
            _put_u32(out, pos + 1, size)
            out[pos + 5 : pos + 5 + size] = scratch[:size]
            return size + 5
    out[pos] = MODE_RAW
    out[pos + 1 : pos + 1 + n] = plane[:n]
    return n + 1


@njit(cache=True, nogil=True, parallel=True)
def encode_blocks(words, kind, itemsize, numel, block_size, n_planes, coder, keep_num, u8, u32):
    """Encode all blocks; returns (data uint8, index int64, checksum partials uint64).

    A plane is entropy-coded only if its payload is below ``n * keep_num / 1024`` bytes.
    """
    n_blocks = (numel + block_size - 1) // block_size
    cap = n_planes * (block_size + 5) + 16  # worst case: every plane raw, or coded just below raw
    tmp = np.empty(n_blocks * cap, np.uint8)
    sizes = np.zeros(n_blocks, np.int64)
    csum = np.zeros(n_blocks, np.uint64)
    for b in prange(n_blocks):
        start = b * block_size
        n = min(block_size, numel - start)
        planes = np.empty((n_planes, block_size), np.uint8)
        scratch = np.empty(2 * block_size + 1024, np.uint8)
        wbuf = np.empty(block_size + 8, np.uint16)
        split_block(words, kind, itemsize, start, n, planes)
        pos = b * cap
        max_payload = (n * keep_num) // 1024
        for p in range(n_planes):
            pos += encode_plane(planes[p], n, coder, max_payload, tmp, pos, scratch, wbuf)
        sizes[b] = pos - b * cap
        csum[b] = sum32_range(u8, u32, start * itemsize, (start + n) * itemsize)
    index = np.zeros(n_blocks + 1, np.int64)
    for b in range(n_blocks):
        index[b + 1] = index[b] + sizes[b]
    data = np.empty(index[n_blocks], np.uint8)
    for b in prange(n_blocks):
        data[index[b] : index[b + 1]] = tmp[b * cap : b * cap + sizes[b]]
    return data, index, csum


@njit(cache=True, nogil=True)
def decode_block(data, lo, hi, n, n_planes, planes, single, multi, slots):
    """Decode the plane sections of one block ``data[lo:hi]`` into ``planes``; (0, -1) or (err, plane)."""
    pos = lo
    for p in range(n_planes):
        if pos >= hi:
            return huffman.ERR_TRUNCATED, p
        mode = data[pos]
        pos += 1
        if mode == MODE_RAW:
            if pos + n > hi:
                return huffman.ERR_TRUNCATED, p
            planes[p, :n] = data[pos : pos + n]
            pos += n
        elif mode == MODE_CONST:
            if pos + 1 > hi:
                return huffman.ERR_TRUNCATED, p
            planes[p, :n] = data[pos]
            pos += 1
        elif mode == MODE_HUFFMAN or mode == MODE_RANS:
            if pos + 4 > hi:
                return huffman.ERR_TRUNCATED, p
            size = 0
            for b in range(4):
                size |= np.int64(data[pos + b]) << (8 * b)
            pos += 4
            if pos + size > hi:
                return huffman.ERR_TRUNCATED, p
            if mode == MODE_HUFFMAN:
                err = huffman.decode_section(data, pos, pos + size, n, planes[p], single, multi)
            else:
                err = rans.decode_section(data, pos, pos + size, n, planes[p], slots)
            if err < 0:
                return err, p
            pos += size
        else:
            return ERR_MODE, p
    if pos != hi:
        return ERR_TRAILING, n_planes - 1
    return 0, -1


@njit(cache=True, nogil=True, parallel=True)
def decode_blocks(data, index, kind, itemsize, numel, block_size, n_planes, words, u8, u32):
    """Decode every block into ``words``; returns (error code, error plane, checksum partial) per block."""
    n_blocks = index.shape[0] - 1
    errs = np.zeros(n_blocks, np.int64)
    err_plane = np.full(n_blocks, -1, np.int64)
    csum = np.zeros(n_blocks, np.uint64)
    for b in prange(n_blocks):
        start = b * block_size
        n = min(block_size, numel - start)
        planes = np.empty((n_planes, block_size), np.uint8)
        single = np.empty(huffman.LUT_SIZE, np.uint16)
        multi = np.empty(huffman.LUT_SIZE, np.uint64)
        slots = np.empty(4096, np.uint32)
        err, plane = decode_block(data, index[b], index[b + 1], n, n_planes, planes, single, multi, slots)
        if err < 0:
            errs[b] = err
            err_plane[b] = plane
        else:
            merge_block(planes, kind, itemsize, start, n, words)
            csum[b] = sum32_range(u8, u32, start * itemsize, (start + n) * itemsize)
    return errs, err_plane, csum
