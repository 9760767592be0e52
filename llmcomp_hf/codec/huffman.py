"""Canonical Huffman coder for one plane section (docs/format.md, mode 2), numba kernels.

Encoding packs codes LSB-first into 4 sub-streams (one per quarter of the block). Decoding uses
a 2048-entry table whose entries hold up to 4 symbols each, and runs the 4 sub-streams in
lockstep so their dependency chains overlap. Every read is checked against the section end and
every write against the sub-stream's output range; errors are returned as negative codes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from llmcomp_hf.codec.models import (
    BITMAP_BYTES,
    HUFF_MAX_LEN,
    canonical_codes,
    read_bitmap,
    write_bitmap,
)

LUT_BITS = HUFF_MAX_LEN
LUT_SIZE = 1 << LUT_BITS
LUT_MASK = LUT_SIZE - 1
N_STREAMS = 4
MEMO_SIZE = 1 + BITMAP_BYTES + 128  # table length + bitmap + up to 256 nibbles

# Error codes shared with blocks.py
ERR_TRUNCATED = -1
ERR_TABLE = -2
ERR_STREAM = -3


@njit(cache=True, nogil=True)
def coded_bits(counts: np.ndarray, lengths: np.ndarray) -> int:
    """Stream bits for these counts under these code lengths; -1 if a present symbol has no code."""
    bits = 0
    for s in range(256):
        if counts[s] > 0:
            if lengths[s] == 0:
                return -1
            bits += counts[s] * lengths[s]
    return bits


@njit(cache=True, nogil=True)
def encoded_size(bits: int, lengths: np.ndarray) -> int:
    """Upper bound of the payload size (bytes): table + stream sizes + stream bits + padding."""
    k = 0
    for s in range(256):
        if lengths[s] > 0:
            k += 1
    return BITMAP_BYTES + (k + 1) // 2 + 12 + (bits + 7) // 8 + N_STREAMS


@njit(cache=True, nogil=True)
def encode_section(plane: np.ndarray, n: int, lengths: np.ndarray, out: np.ndarray, pos: int) -> int:
    """Write the Huffman payload of ``plane[:n]`` at ``out[pos]``; return the payload length.

    The table lists every symbol with a non-zero length (a superset of those in the block when a
    previous block's table is reused).
    """
    start = pos
    k = write_bitmap(lengths, out, pos)
    pos += BITMAP_BYTES
    j = 0
    for s in range(256):
        if lengths[s] > 0:
            if j & 1:
                out[pos + (j >> 1)] |= lengths[s] << 4
            else:
                out[pos + (j >> 1)] = lengths[s]
            j += 1
    pos += (k + 1) // 2
    codes = canonical_codes(lengths)
    sizes_at = pos
    pos += 12
    q = (n + N_STREAMS - 1) // N_STREAMS
    for st in range(N_STREAMS):
        lo = min(st * q, n)
        hi = min(lo + q, n)
        stream_start = pos
        acc = np.uint64(0)
        nbits = 0
        for i in range(lo, hi):
            s = plane[i]
            acc |= np.uint64(codes[s]) << np.uint64(nbits)
            nbits += lengths[s]
            if nbits >= 32:
                out[pos] = acc & 0xFF
                out[pos + 1] = (acc >> np.uint64(8)) & 0xFF
                out[pos + 2] = (acc >> np.uint64(16)) & 0xFF
                out[pos + 3] = (acc >> np.uint64(24)) & 0xFF
                pos += 4
                acc >>= np.uint64(32)
                nbits -= 32
        while nbits > 0:
            out[pos] = acc & 0xFF
            pos += 1
            acc >>= np.uint64(8)
            nbits -= 8
        if st < N_STREAMS - 1:
            ln = pos - stream_start
            for b in range(4):
                out[sizes_at + 4 * st + b] = (ln >> (8 * b)) & 0xFF
    return pos - start


@njit(cache=True, nogil=True)
def build_tables(data: np.ndarray, pos: int, end: int, single: np.ndarray, multi: np.ndarray) -> int:
    """Parse bitmap + lengths at ``data[pos:end]``, fill the decode tables; return the new pos or <0.

    ``single[i]`` = symbol | length << 8 for the code starting at window ``i``;
    ``multi[i]`` = up to 4 symbols (bytes 0..3) | bits consumed << 32 | count << 40.
    """
    if pos + BITMAP_BYTES > end:
        return ERR_TRUNCATED
    syms = np.empty(256, np.int64)
    k = read_bitmap(data, pos, syms)
    pos += BITMAP_BYTES
    if k < 2:
        return ERR_TABLE
    if pos + (k + 1) // 2 > end:
        return ERR_TRUNCATED
    lengths = np.zeros(256, np.uint8)
    kraft = 0
    for j in range(k):
        ln = (data[pos + (j >> 1)] >> (4 * (j & 1))) & 0xF
        if ln == 0 or ln > HUFF_MAX_LEN:
            return ERR_TABLE
        lengths[syms[j]] = ln
        kraft += 1 << (HUFF_MAX_LEN - ln)
    if kraft != LUT_SIZE:  # only complete codes are valid: every table window then decodes
        return ERR_TABLE
    pos += (k + 1) // 2
    codes = canonical_codes(lengths)
    for j in range(k):
        s = syms[j]
        ln = np.int64(lengths[s])
        entry = np.uint16(s | (ln << 8))
        for i in range(np.int64(codes[s]), LUT_SIZE, np.int64(1) << ln):
            single[i] = entry
    for w in range(LUT_SIZE):
        used = 0
        cnt = 0
        packed = np.uint64(0)
        while cnt < 4:
            e = single[(w >> used) & LUT_MASK]
            ln = np.int64(e >> 8)
            if used + ln > LUT_BITS:
                break
            packed |= np.uint64(e & 0xFF) << np.uint64(8 * cnt)
            used += ln
            cnt += 1
        multi[w] = packed | (np.uint64(used) << np.uint64(32)) | (np.uint64(cnt) << np.uint64(40))
    return pos


@njit(cache=True, nogil=True, inline="always")
def _refill(data, pos, end, acc, nbits):
    """Top up the bit buffer to >= 56 bits; bytes past ``end`` read as zero (checked later)."""
    if pos + 8 <= end:
        v = (
            np.uint64(data[pos])
            | (np.uint64(data[pos + 1]) << np.uint64(8))
            | (np.uint64(data[pos + 2]) << np.uint64(16))
            | (np.uint64(data[pos + 3]) << np.uint64(24))
            | (np.uint64(data[pos + 4]) << np.uint64(32))
            | (np.uint64(data[pos + 5]) << np.uint64(40))
            | (np.uint64(data[pos + 6]) << np.uint64(48))
            | (np.uint64(data[pos + 7]) << np.uint64(56))
        )
        acc |= v << np.uint64(nbits)
        step = (63 - nbits) >> 3
        return pos + step, acc, nbits + 8 * step
    while nbits <= 56:
        if pos < end:
            acc |= np.uint64(data[pos]) << np.uint64(nbits)
        pos += 1  # may run past end: counted, and rejected by _stream_ok
        nbits += 8
    return pos, acc, nbits


@njit(cache=True, nogil=True, inline="always")
def _fast4(multi, acc, nbits, out, o):
    """Four table lookups (needs >= 44 buffered bits and 16 bytes of room at ``out[o]``)."""
    for _ in range(4):
        e = multi[acc & np.uint64(LUT_MASK)]
        out[o] = e & 0xFF
        out[o + 1] = (e >> np.uint64(8)) & 0xFF
        out[o + 2] = (e >> np.uint64(16)) & 0xFF
        out[o + 3] = (e >> np.uint64(24)) & 0xFF
        used = (e >> np.uint64(32)) & np.uint64(0xFF)
        o += np.int64((e >> np.uint64(40)) & np.uint64(0xF))
        acc >>= used
        nbits -= np.int64(used)
    return acc, nbits, o


@njit(cache=True, nogil=True)
def _finish(data, pos, end, acc, nbits, single, out, o, o_end):
    """Decode one symbol at a time until ``out[o_end]``."""
    while o < o_end:
        if nbits < LUT_BITS:
            pos, acc, nbits = _refill(data, pos, end, acc, nbits)
        e = single[acc & np.uint64(LUT_MASK)]
        out[o] = e & 0xFF
        ln = np.int64(e >> 8)
        acc >>= np.uint64(ln)
        nbits -= ln
        o += 1
    return pos, nbits


@njit(cache=True, nogil=True, inline="always")
def _stream_ok(start, end, pos, nbits):
    consumed_bits = (pos - start) * 8 - nbits
    return (consumed_bits + 7) // 8 == end - start


@njit(cache=True, nogil=True)
def _same_table(data: np.ndarray, pos: int, end: int, memo: np.ndarray) -> int:
    """Length of the table at ``data[pos]`` if it equals the one memoised, else 0."""
    tl = np.int64(memo[0])
    if tl == 0 or pos + tl > end:
        return 0
    for i in range(tl):
        if data[pos + i] != memo[1 + i]:
            return 0
    return tl


@njit(cache=True, nogil=True)
def decode_section(data: np.ndarray, pos: int, end: int, n: int, out: np.ndarray, single: np.ndarray, multi: np.ndarray, memo: np.ndarray) -> int:
    """Decode the Huffman payload ``data[pos:end]`` into ``out[:n]``; 0 on success, <0 on error.

    ``memo`` (uint8[1 + 32 + 128]) remembers the table bytes that ``single``/``multi`` were built
    from, so consecutive blocks sharing a table skip the rebuild.
    """
    tl = _same_table(data, pos, end, memo)
    if tl:
        pos += tl
    else:
        memo[0] = 0
        new_pos = build_tables(data, pos, end, single, multi)
        if new_pos < 0:
            return new_pos
        memo[0] = new_pos - pos
        memo[1 : 1 + new_pos - pos] = data[pos:new_pos]
        pos = new_pos
    if pos + 12 > end:
        return ERR_TRUNCATED
    starts = np.empty(N_STREAMS + 1, np.int64)
    starts[0] = pos + 12
    for st in range(N_STREAMS - 1):
        ln = 0
        for b in range(4):
            ln |= np.int64(data[pos + 4 * st + b]) << (8 * b)
        starts[st + 1] = starts[st] + ln
    starts[N_STREAMS] = end
    for st in range(N_STREAMS):
        if starts[st + 1] < starts[st] or starts[st + 1] > end:
            return ERR_TRUNCATED
    q = (n + N_STREAMS - 1) // N_STREAMS
    o0, o1, o2, o3 = min(0, n), min(q, n), min(2 * q, n), min(3 * q, n)
    e0, e1, e2, e3 = o1, o2, o3, n
    p0, p1, p2, p3 = starts[0], starts[1], starts[2], starts[3]
    a0 = a1 = a2 = a3 = np.uint64(0)
    b0 = b1 = b2 = b3 = 0
    # Lockstep fast loop while every sub-stream has room for 16 more symbols in its own range.
    while o0 + 16 <= e0 and o1 + 16 <= e1 and o2 + 16 <= e2 and o3 + 16 <= e3:
        p0, a0, b0 = _refill(data, p0, starts[1], a0, b0)
        p1, a1, b1 = _refill(data, p1, starts[2], a1, b1)
        p2, a2, b2 = _refill(data, p2, starts[3], a2, b2)
        p3, a3, b3 = _refill(data, p3, starts[4], a3, b3)
        a0, b0, o0 = _fast4(multi, a0, b0, out, o0)
        a1, b1, o1 = _fast4(multi, a1, b1, out, o1)
        a2, b2, o2 = _fast4(multi, a2, b2, out, o2)
        a3, b3, o3 = _fast4(multi, a3, b3, out, o3)
    p0, b0 = _finish(data, p0, starts[1], a0, b0, single, out, o0, e0)
    p1, b1 = _finish(data, p1, starts[2], a1, b1, single, out, o1, e1)
    p2, b2 = _finish(data, p2, starts[3], a2, b2, single, out, o2, e2)
    p3, b3 = _finish(data, p3, starts[4], a3, b3, single, out, o3, e3)
    if not (
        _stream_ok(starts[0], starts[1], p0, b0)
        and _stream_ok(starts[1], starts[2], p1, b1)
        and _stream_ok(starts[2], starts[3], p2, b2)
        and _stream_ok(starts[3], starts[4], p3, b3)
    ):
        return ERR_STREAM
    return 0
