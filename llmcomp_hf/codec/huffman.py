"""Canonical Huffman coder for one plane section (docs/format.md, mode 2), numba kernels.

Encoding packs codes LSB-first into 4 sub-streams (one per quarter of the block). Decoding looks
up 11-bit windows in a table whose entries hold up to 5 symbols each (written with one 8-byte
store), and runs the 4 sub-streams interleaved so their dependency chains overlap. The fast loop
runs in rounds that every sub-stream surely has input and output room for, so it needs no
per-lookup checks; the tail is decoded with checks. Every read is checked against the section
end and every write against the sub-stream's output range; errors are returned as negative codes.
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.cpython.unsafe.numbers import leading_zeros  # the ctlz intrinsic; numba >= 0.60 (pyproject) has it
from numba.extending import intrinsic

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
# Multi-symbol decode table (decode side only, not part of the format): window bits, symbols per
# entry (at most 5: build_tables packs 5 symbols and their lengths in a uint64), lookups per refill
# (a refill leaves >= 56 bits). Worst case of one fast-loop round: bytes the input advances,
# symbols the output advances, bytes written from the round's start.
MULTI_BITS = 11
MULTI_SIZE = 1 << MULTI_BITS
MULTI_MAX = 5
FAST_LOOKUPS = 56 // MULTI_BITS
FAST_IN = 7
FAST_OUT = FAST_LOOKUPS * MULTI_MAX
FAST_SLACK = FAST_OUT - MULTI_MAX + 8
MEMO_SIZE = 1 + BITMAP_BYTES + 128  # table length + bitmap + up to 256 nibbles

# Error codes shared with blocks.py
ERR_TRUNCATED = -1
ERR_TABLE = -2
ERR_STREAM = -3

_U0, _U1, _U2, _U3, _U4, _U5, _U6, _U7 = (np.uint64(i) for i in range(8))
_U8, _U16, _U24, _U32, _U40, _U48, _U56 = (np.uint64(i) for i in range(8, 64, 8))
_U61, _U63, _U255 = np.uint64(61), np.uint64(63), np.uint64(255)
_TOP = np.uint64(1 << 63)
_MULTI_MASK = np.uint64(MULTI_SIZE - 1)
_RUN_LENS = np.uint64(8 * MULTI_MAX)
_REVERSED = np.array([int(f"{i:0{MULTI_BITS}b}"[::-1], 2) for i in range(MULTI_SIZE)], np.uint64)
_SYMS = np.uint64((1 << (8 * MULTI_MAX)) - 1)
_LENS = np.uint64(((1 << (4 * MULTI_MAX)) - 16) << (8 * MULTI_MAX))  # nibbles 1.. of the lengths


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


@intrinsic
def _put64(typingctx, arr, idx, val):
    """Little-endian uint64 ``val`` to ``arr[idx:idx+8]`` (uint8 array) with one unaligned store
    (LLVM does not always merge the byte stores of _store64). No bounds check: the caller ensures
    ``idx + 8 <= arr.shape[0]``.
    """
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C" and arr.dtype == types.uint8):
        return None
    sig = types.void(arr, idx, types.uint64)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        v = args[2] if sys.byteorder == "little" else builder.bswap(args[2])
        builder.store(v, builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(64).as_pointer()), align=1)

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _put4(acc, nbits, src, j, tab):
    """Four codes onto the top of ``acc`` (the newest bit highest); ``nbits`` gains their lengths.

    ``tab[s]`` = code << (64 - length) | length: a right shift by an entry (the shift takes its
    low 6 bits) makes room for its code, which it then ORs in. Its length bits land in bits 0-3,
    below the valid bits (at most 7 + 4 * 11 of them). Written as one shift per code and
    independent ORs, so the chain through ``acc`` is two operations per four codes.
    """
    e0 = tab[src[j]]
    e1 = tab[src[j + _U1]]
    e2 = tab[src[j + _U2]]
    e3 = tab[src[j + _U3]]
    s23 = e2 + e3  # low bytes: sums of lengths
    s123 = e1 + s23
    s0123 = e0 + s123
    acc = (acc >> (s0123 & _U63)) | (e0 >> (s123 & _U63)) | (e1 >> (s23 & _U63)) | (e2 >> (e3 & _U63)) | e3
    return acc, nbits + s0123


@njit(cache=True, nogil=True)
def _pack_tail(src, j, tab, out, o, lim, acc, nbits):
    """Pack ``src[j:]`` code by code (as _pack_one, byte by byte); no byte at or past ``lim`` is
    written."""
    for i in range(j, np.uint64(src.shape[0])):
        e = tab[src[i]]
        acc = (acc >> (e & _U63)) | e
        v = (nbits + e) & _U255
        val = acc >> ((np.uint64(64) - v) & _U63)
        for t in range(8):
            if o + np.uint64(t) < lim:
                out[o + np.uint64(t)] = np.uint8((val >> np.uint64(8 * t)) & _U255)
        o += v >> _U3
        nbits = v & _U7


@njit(cache=True, nogil=True)
def _pack_one(a, tab, out, o, lim):
    """Pack sub-stream ``a`` LSB-first into ``out[o:lim]``, its exact place.

    The buffer ``acc`` holds its ``v`` valid bits at the top (see _put4), the oldest in the byte
    ``out[o]``: each group of 4 codes is followed by one 8-byte store of those bits (the bits
    above them are zero, and the last partial byte is stored again, completed, by the next
    store) while 8 bytes fit before ``lim``; the rest goes byte by byte.
    """
    acc, bits = _U0, _U0
    m = np.uint64(a.shape[0]) >> _U2  # groups of 4 codes
    lim = min(lim, np.uint64(out.shape[0]))  # _put64 is unchecked
    j = _U0
    while True:
        # a group adds <= 44 bits to <= 7: o advances <= 6 bytes, so these groups all have room
        room = (lim - o - _U8) // _U6 + _U1 if o + _U8 <= lim else _U0
        g = min(m, room)
        if g == _U0:
            break
        m -= g
        for _ in range(g):
            acc, bits = _put4(acc, bits, a, j, tab)
            v = bits & _U255
            _put64(out, o, acc >> ((np.uint64(64) - v) & _U63))
            o += v >> _U3
            bits = v & _U7
            j += _U4
    _pack_tail(a, j, tab, out, o, lim, acc, bits)


@njit(cache=True, nogil=True)
def encode_section(plane: np.ndarray, n: int, lengths: np.ndarray, quarters: np.ndarray, out: np.ndarray, pos: int) -> int:
    """Write the Huffman payload of ``plane[:n]`` at ``out[pos]``; return the payload length.

    ``quarters[st]`` are the symbol counts of sub-stream ``st`` (models.quarter_histogram), which
    give every sub-stream's exact size up front, so each is packed in place with 8-byte stores
    and nothing past the payload is written.
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
    tab = np.zeros(256, np.uint64)  # see _put4
    for s in range(256):
        if lengths[s] > 0:
            tab[s] = (np.uint64(codes[s]) << np.uint64(64 - lengths[s])) | np.uint64(lengths[s])
    bounds = np.empty(N_STREAMS + 1, np.int64)  # sub-stream st at out[bounds[st]:bounds[st + 1]]
    bounds[0] = pos + 12
    for st in range(N_STREAMS):
        bits = 0
        for s in range(256):
            bits += np.int64(quarters[st, s]) * lengths[s]
        ln = (bits + 7) // 8
        bounds[st + 1] = bounds[st] + ln
        if st < N_STREAMS - 1:
            for b in range(4):
                out[pos + 4 * st + b] = (ln >> (8 * b)) & 0xFF
    q = (n + N_STREAMS - 1) // N_STREAMS
    cut = np.empty(N_STREAMS + 1, np.int64)
    for st in range(N_STREAMS + 1):
        cut[st] = min(st * q, n)
    u = bounds.astype(np.uint64)
    for st in range(N_STREAMS):
        _pack_one(plane[cut[st] : cut[st + 1]], tab, out, u[st], u[st + 1])
    return bounds[N_STREAMS] - start


@njit(cache=True, nogil=True)
def build_tables(data: np.ndarray, pos: int, end: int, single: np.ndarray, multi: np.ndarray) -> int:
    """Parse bitmap + lengths at ``data[pos:end]``, fill the decode tables; return the new pos or <0.

    ``single[i]`` = symbol | length << 8 for the code starting at window ``i`` (LUT_BITS bits);
    ``multi[i]`` = bits consumed | up to MULTI_MAX symbols << 8 (bytes 1..) | count << 61 for the
    MULTI_BITS-bit window ``i``: the longest run of whole codes in it (at least one, the code
    being complete), capped at MULTI_MAX symbols.
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
    by_len = np.empty(k, np.int64)  # symbols in canonical order: by code length, then value
    first = np.zeros(HUFF_MAX_LEN + 2, np.int64)
    for j in range(k):
        first[lengths[syms[j]] + 1] += 1
    for ln in range(1, HUFF_MAX_LEN + 2):
        first[ln] += first[ln - 1]
    for j in range(k):
        ln = lengths[syms[j]]
        by_len[first[ln]] = syms[j]
        first[ln] += 1  # ends as the number of codes of length <= ln
    # Greedy runs of every b-bit window for b = 1..MULTI_BITS (level b at runs[2**b:2**(b+1)]): a
    # code of length ln <= b, then the run of the (b - ln)-bit rest, capped at MULTI_MAX symbols.
    # Packed as symbols (byte i: the i-th) | their lengths (nibble i) << 8 * MULTI_MAX, so that
    # prepending a symbol is two shifts and masks (a symbol past the cap falls off the top).
    # Windows are indexed bit-reversed (first stream bit = most significant): the windows starting
    # with each code, in canonical order, are then consecutive ranges, and so are their rests.
    runs = np.empty(2 * MULTI_SIZE, np.uint64)
    runs[1] = 0  # level 0: the empty run
    for b in range(1, MULTI_BITS + 1):
        dst = 1 << b
        for j in range(first[min(b, HUFF_MAX_LEN)]):  # the codes of length <= b
            s = by_len[j]
            ln = np.int64(lengths[s])
            rest = 1 << (b - ln)
            head = np.uint64(s) | (np.uint64(ln) << _RUN_LENS)
            src_run = runs[rest : 2 * rest]
            dst_run = runs[dst : dst + rest]
            for r in range(rest):
                g = src_run[r]
                dst_run[r] = ((g << _U8) & _SYMS) | ((g << _U4) & _LENS) | head
            dst += rest
        runs[dst : 2 << b] = 0  # the first code is longer than the window
    for w in range(MULTI_SIZE):  # to stream order
        multi[w] = runs[np.uint64(MULTI_SIZE) + _REVERSED[w]]
    for w in range(LUT_SIZE):  # the first code
        g = multi[w]
        single[w] = np.uint16((g & _U255) | ((g >> (_RUN_LENS - _U8)) & np.uint64(0xF00)))
    for w in range(MULTI_SIZE):
        g = multi[w]
        lens = g >> _RUN_LENS
        used = np.uint64(0)
        for i in range(MULTI_MAX):
            used += (lens >> np.uint64(4 * i)) & np.uint64(15)
        cnt = (np.uint64(67) - leading_zeros(lens)) >> np.uint64(2)  # lengths are >= 1
        multi[w] = ((g & _SYMS) << _U8) | used | (cnt << _U61)
    return pos


@njit(cache=True, nogil=True, inline="always")
def _refill(data, pos, end, acc, nbits):
    """Top up the bit buffer to >= 56 bits; bytes past ``end`` read as zero (checked later)."""
    if pos + 8 <= end:
        acc |= _load64(data, np.uint64(pos)) << np.uint64(nbits)
        step = (63 - nbits) >> 3
        return pos + step, acc, nbits + 8 * step
    while nbits <= 56:
        if pos < end:
            acc |= np.uint64(data[pos]) << np.uint64(nbits)
        pos += 1  # may run past end: counted, and rejected by _stream_ok
        nbits += 8
    return pos, acc, nbits


@njit(cache=True, nogil=True, inline="always")
def _load64(data, p):
    """Little-endian uint64 at ``data[p:p+8]`` (``p`` unsigned, so no wraparound code)."""
    return (
        np.uint64(data[p])
        | (np.uint64(data[p + _U1]) << _U8)
        | (np.uint64(data[p + _U2]) << _U16)
        | (np.uint64(data[p + _U3]) << _U24)
        | (np.uint64(data[p + _U4]) << _U32)
        | (np.uint64(data[p + _U5]) << _U40)
        | (np.uint64(data[p + _U6]) << _U48)
        | (np.uint64(data[p + _U7]) << _U56)
    )


@njit(cache=True, nogil=True, inline="always")
def _store64(out, o, v):
    """Little-endian uint64 ``v`` to ``out[o:o+8]`` (``o`` unsigned)."""
    out[o] = np.uint8(v & _U255)
    out[o + _U1] = np.uint8((v >> _U8) & _U255)
    out[o + _U2] = np.uint8((v >> _U16) & _U255)
    out[o + _U3] = np.uint8((v >> _U24) & _U255)
    out[o + _U4] = np.uint8((v >> _U32) & _U255)
    out[o + _U5] = np.uint8((v >> _U40) & _U255)
    out[o + _U6] = np.uint8((v >> _U48) & _U255)
    out[o + _U7] = np.uint8(v >> _U56)


@njit(cache=True, nogil=True, inline="always")
def _fast_refill(data, p, acc):
    """Step ``p`` past the bytes consumed and reload the buffer from ``data[p:p+8]``.

    The buffer is "marked": 63 loaded bits with bit 63 set as an end marker, shifted right past
    the bits of byte ``p`` already consumed. Its leading zeros then count the bits consumed since
    ``p``, so no bit count is kept. It holds >= 56 valid bits after a reload, so FAST_LOOKUPS
    windows never reach the marker. The caller ensures ``p + 8 <= end`` (_fast_rounds).
    """
    lz = leading_zeros(acc)
    p += lz >> _U3
    return p, (_load64(data, p) | _TOP) >> (lz & _U7)


@njit(cache=True, nogil=True, inline="always")
def _fast_lookup(multi, acc, out, o):
    """One table lookup: store 8 bytes at ``out[o]``, advance by the entry's count."""
    e = multi[acc & _MULTI_MASK]
    _store64(out, o, (e >> _U8) | (e << _U56))  # a rotate: 8 bytes of one value make one store
    return acc >> (e & _U63), o + (e >> _U61)


@njit(cache=True, nogil=True, inline="always")
def _fast_rounds(p, acc, end, o, o_end):
    """Fast-loop rounds this sub-stream surely has room for (reads < ``end``, writes < ``o_end``)."""
    nxt = np.int64(p + (leading_zeros(acc) >> _U3))
    r_in = (end - 8 - nxt) // FAST_IN + 1
    r_out = (o_end - FAST_SLACK - np.int64(o)) // FAST_OUT + 1
    return max(0, min(r_in, r_out))


@njit(cache=True, nogil=True, inline="always")
def _unmark(data, p, acc, end):
    """Marked buffer at ``p`` -> (pos, acc, nbits) as _refill and _finish keep them."""
    lz = leading_zeros(acc)
    pos = np.int64(p + (lz >> _U3))
    pos, acc, nbits = _refill(data, pos, end, np.uint64(0), 0)
    skip = np.int64(lz & _U7)
    return pos, acc >> np.uint64(skip), nbits - skip


@njit(cache=True, nogil=True)
def _finish(data, pos, end, acc, nbits, single, multi, out, o, o_end):
    """Decode until ``out[o_end]``: table runs while 8 bytes of room remain, then single symbols."""
    while o + 8 <= o_end:
        if nbits < MULTI_BITS:
            pos, acc, nbits = _refill(data, pos, end, acc, nbits)
        e = multi[acc & _MULTI_MASK]
        _store64(out, np.uint64(o), (e >> _U8) | (e << _U56))
        used = e & _U63
        acc >>= used
        nbits -= np.int64(used)
        o += np.int64(e >> _U61)
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
    s0, s1, s2, s3, s4 = starts[0], starts[1], starts[2], starts[3], starts[4]
    e0, e1, e2, e3 = min(q, n), min(2 * q, n), min(3 * q, n), n
    # Fast loop on marked buffers, in rounds that every sub-stream surely has room for.
    p0, p1, p2, p3 = np.uint64(s0), np.uint64(s1), np.uint64(s2), np.uint64(s3)
    o0, o1, o2, o3 = np.uint64(0), np.uint64(e0), np.uint64(e1), np.uint64(e2)
    a0 = a1 = a2 = a3 = _TOP
    while True:
        rounds = min(
            min(_fast_rounds(p0, a0, s1, o0, e0), _fast_rounds(p1, a1, s2, o1, e1)),
            min(_fast_rounds(p2, a2, s3, o2, e2), _fast_rounds(p3, a3, s4, o3, e3)),
        )
        if rounds == 0:
            break
        for _ in range(rounds):
            p0, a0 = _fast_refill(data, p0, a0)
            p1, a1 = _fast_refill(data, p1, a1)
            p2, a2 = _fast_refill(data, p2, a2)
            p3, a3 = _fast_refill(data, p3, a3)
            for _ in range(FAST_LOOKUPS):  # interleaved: the 4 dependency chains overlap best
                a0, o0 = _fast_lookup(multi, a0, out, o0)
                a1, o1 = _fast_lookup(multi, a1, out, o1)
                a2, o2 = _fast_lookup(multi, a2, out, o2)
                a3, o3 = _fast_lookup(multi, a3, out, o3)
    # The tail, with checks, from (byte position, bit buffer, bit count).
    pos0, acc0, nb0 = _unmark(data, p0, a0, s1)
    pos1, acc1, nb1 = _unmark(data, p1, a1, s2)
    pos2, acc2, nb2 = _unmark(data, p2, a2, s3)
    pos3, acc3, nb3 = _unmark(data, p3, a3, s4)
    pos0, nb0 = _finish(data, pos0, s1, acc0, nb0, single, multi, out, np.int64(o0), e0)
    pos1, nb1 = _finish(data, pos1, s2, acc1, nb1, single, multi, out, np.int64(o1), e1)
    pos2, nb2 = _finish(data, pos2, s3, acc2, nb2, single, multi, out, np.int64(o2), e2)
    pos3, nb3 = _finish(data, pos3, s4, acc3, nb3, single, multi, out, np.int64(o3), e3)
    if not (
        _stream_ok(s0, s1, pos0, nb0)
        and _stream_ok(s1, s2, pos1, nb1)
        and _stream_ok(s2, s3, pos2, nb2)
        and _stream_ok(s3, s4, pos3, nb3)
    ):
        return ERR_STREAM
    return 0
