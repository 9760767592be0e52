"""Encoder side of the ``rans-scale`` coder (mode 5; the decoder is rans_scale.py): the row and
column scale maps, the payload writer and the block groups.

``scale_maps`` measures each row's (and column's) mean plane-0 value (the exponent of bf16/fp32;
zeros left out) in quarter units, so that ``p0 + (s >> 2)`` (``s = R[row] + C[col]``) is about the
same for every element whatever its row's scale. ``encode_groups_scale`` then codes plane 0 of each
block as mode 5 with one model per group of 16 blocks (stored in the first block that is coded
with it, referenced by the later ones), const or raw; the other planes as under ``rans``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

import llmcomp_hf.codec.rans_ctx as rans_ctx
import llmcomp_hf.codec.rans_scale as rans_scale
from llmcomp_hf.codec.blocks import GROUP, MODE_CONST, MODE_RANS, MODE_RAW, _copy, _put_u32, encode_plane
from llmcomp_hf.codec.checksum import sum32_range
from llmcomp_hf.codec.models import RANS_SCALE_BITS
from llmcomp_hf.codec.planes import KIND_BYTES, KIND_F32, split_block

NO_MAPS = (0, np.zeros(1, np.int64), np.zeros(1, np.int64), False)


def scale_maps(words: np.ndarray, kind: int, shape: list[int]) -> tuple[int, np.ndarray, np.ndarray, bool]:
    """(L, R per row, C per column, column map used) of a float tensor, or ``L = 0`` when mode 5
    does not apply (not a float, fewer than 2 rows, rows shorter than ``MIN_ROW``)."""
    numel = math.prod(shape)
    if kind == KIND_BYTES or len(shape) < 2 or shape[0] < 2 or numel == 0:
        return NO_MAPS
    L = numel // shape[0]
    if L < rans_scale.MIN_ROW:
        return NO_MAPS
    p0 = ((words >> (23 if kind == KIND_F32 else 7)) & 0xFF).astype(np.float32).reshape(shape[0], L)
    nz = p0 > 0
    cnt = np.maximum(nz.sum(axis=1), 1)
    row = (p0 * nz).sum(axis=1) / cnt
    row[nz.sum(axis=1) == 0] = np.median(row)
    rows = np.clip(np.round(4 * (row.max() - row)), 0, rans_scale.MAX_SCALE).astype(np.int64)
    has_col = L <= rans_scale.MAX_COL_MAP
    cols = np.zeros(L if has_col else 1, np.int64)
    if has_col:
        resid = (p0 - row[:, None]) * nz
        col = resid.sum(axis=0) / np.maximum(nz.sum(axis=0), 1)
        cols = np.clip(np.round(4 * (col.max() - col)), 0, rans_scale.MAX_SCALE).astype(np.int64)
    return L, rows, cols, has_col


@njit(cache=True, nogil=True)
def block_symbols(p0, p1, n, g0, L, rows, cols, has_col, ctx, sym, hist) -> None:
    """Per element of a block: context ``(s & 3) << 3 | top 3 mantissa bits`` in ``ctx``, shifted
    symbol in ``sym``; add their counts to ``hist[32, 256]``."""
    for i in range(n):
        g = g0 + i
        s = rows[g // L] + (cols[g % L] if has_col else 0)
        c = ((s & 3) << 3) | ((p1[i] >> 4) & 7)
        d = (np.int64(p0[i]) + (s >> 2)) & 0xFF
        ctx[i] = c
        sym[i] = d
        hist[c, d] += 1


@njit(cache=True, nogil=True)
def fold(hist: np.ndarray, k: int) -> np.ndarray:
    """Counts per (quarter, k mantissa bits) context (int64[4 * 2**k, 256]) from ``hist[32, 256]``."""
    out = np.zeros((4 << k, 256), np.int64)
    for c in range(rans_scale.N_CTX):
        out[((c >> 3) << k) | ((c & 7) >> (3 - k))] += hist[c]
    return out


@njit(cache=True, nogil=True)
def _zigzag(d: int) -> int:
    return 2 * d if d >= 0 else -2 * d - 1


@njit(cache=True, nogil=True)
def code_bits(vals: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """(order, bits): the exp-Golomb order (<= 12, ties: smallest) that codes the zigzag deltas of
    ``vals[lo:hi]`` (the first against 0) in the fewest bits."""
    best, order = -1, 0
    for r in range(rans_ctx.MAX_ORDER + 1):
        bits, prev = 0, 0
        for t in range(lo, hi):
            bits += rans_ctx._eg_bits(_zigzag(vals[t] - prev), r)
            prev = vals[t]
        if best < 0 or bits < best:
            best, order = bits, r
    return order, best


@njit(cache=True, nogil=True)
def put_codes(vals: np.ndarray, lo: int, hi: int, out: np.ndarray, pos: int) -> int:
    """Order byte, then the exp-Golomb codes of the zigzag deltas of ``vals[lo:hi]``, packed
    LSB-first and padded with zero bits; returns the new pos."""
    r, _ = code_bits(vals, lo, hi)
    out[pos] = r
    pos += 1
    acc, nbits, prev = np.int64(0), 0, 0
    for t in range(lo, hi):
        v = _zigzag(vals[t] - prev)
        prev = vals[t]
        u = (v >> r) + 1
        nb = 0
        while u >> nb:
            nb += 1
        nbits += nb - 1
        for b in range(nb - 1, -1, -1):
            acc |= np.int64((u >> b) & 1) << nbits
            nbits += 1
        for b in range(r - 1, -1, -1):
            acc |= np.int64((v >> b) & 1) << nbits
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
def model_bytes(k, L, cols, has_col, freq, present) -> int:
    """Stored size of a model: head, column codes, tables."""
    size = rans_scale.MODEL_HEAD + rans_ctx.table_bytes(freq, present)
    if has_col:
        size += 1 + (code_bits(cols, 0, L)[1] + 7) // 8
    return size


@njit(cache=True, nogil=True)
def encode_payload(n, k, freq, ref, present, L, cols, has_col, rows, r0, r1, ctx, sym, p1, out, pos, words) -> int:
    """Write a mode-5 payload at ``out[pos]`` (ref byte, model when ``ref == 0``, rows ``r0..r1``,
    states, words) for the block whose contexts/symbols (block_symbols) are ``ctx``/``sym``;
    ``words`` is scratch of >= n+8 u16. Returns the payload length."""
    start = pos
    out[pos] = ref
    pos += 1
    if ref == 0:
        out[pos] = k | (np.int64(has_col) << 2)
        for t in range(4):
            out[pos + 1 + t] = (L >> (8 * t)) & 0xFF
        pos += rans_scale.MODEL_HEAD
        if has_col:
            pos = put_codes(cols, 0, L, out, pos)
        pos = rans_ctx.write_tables(freq, k, present, out, pos)
    pos = put_codes(rows, r0, r1 + 1, out, pos)
    n_ctx = 4 << k
    cum = np.zeros((n_ctx, 256), np.int64)
    for c in range(n_ctx):
        acc = 0
        for s in range(256):
            cum[c, s] = acc
            acc += freq[c, s]
    x = np.full(4, rans_scale.RANS_L, np.int64)
    w = words.shape[0]
    for i in range(n - 1, -1, -1):
        lane = i & 3
        cc = ctx[i]
        c = ((cc >> 3) << k) | ((cc & 7) >> (3 - k))
        s = sym[i]
        f = freq[c, s]
        xi = x[lane]
        if xi >= f << (32 - RANS_SCALE_BITS):
            w -= 1
            words[w] = xi & 0xFFFF
            xi >>= 16
        x[lane] = ((xi // f) << RANS_SCALE_BITS) + (xi % f) + cum[c, s]
    for lane in range(4):  # a state below 2**24 takes 3 bytes, flagged in bit 4 + lane of the ref byte
        nb = 4
        if x[lane] < rans_ctx.STATE3_LIMIT:
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
def _group_model(planes, words, kind, itemsize, numel, block_size, g_lo, g_hi, L, rows, cols, has_col, ctx, sym):
    """The group's model: (k, freq[4 * 2**k, 256], present); k = -1 when plane 0 has < 2 symbols.

    k (<= ENCODER_MAX_K) minimises the estimated coded size plus the model bytes over the group."""
    total = np.zeros((rans_scale.N_CTX, 256), np.int64)
    for b in range(g_lo, g_hi):
        start = b * block_size
        n = min(block_size, numel - start)
        split_block(words, kind, itemsize, start, n, planes)
        block_symbols(planes[0], planes[1], n, start, L, rows, cols, has_col, ctx, sym, total)
    present = total.sum(axis=0)
    best_k, best_cost = -1, np.int64(0)
    best = np.zeros((1, 256), np.int64)
    if np.count_nonzero(present) < 2:
        return best_k, best, present
    for k in range(rans_scale.ENCODER_MAX_K + 1):
        counts = fold(total, k)
        freq = rans_ctx.tables(counts, present)
        c = rans_ctx.cost(counts, freq) + model_bytes(k, L, cols, has_col, freq, present) * 8 * rans_ctx.COST_ONE
        if best_k < 0 or c < best_cost:
            best_k, best_cost, best = k, c, freq
    return best_k, best, present


@njit(cache=True, nogil=True)
def encode_groups_scale(words, kind, itemsize, numel, block_size, n_planes, coder, keep_num, u8, u32, g, part, parts, tmp, cap,
                        sizes, csum, L, rows, cols, has_col):
    """Encode group ``g`` (``parts`` must be 1: the group shares one model) into the ``cap``-sized
    block slots of ``tmp``, as blocks.encode_groups does; plane 0 as mode 5, const or raw."""
    n_blocks = sizes.shape[0]
    planes = np.empty((n_planes, block_size), np.uint8)
    # words (2n), row codes (<= n/4), column codes, 32 tables
    scratch = np.empty(3 * block_size + 1024 + 4 * rans_ctx.TABLE_MAX_BYTES + 4 * min(L, rans_scale.MAX_COL_MAP), np.uint8)
    wbuf = np.empty(block_size + 8, np.uint16)
    ctx = np.empty(block_size, np.uint8)
    sym = np.empty(block_size, np.uint8)
    prev = np.zeros((n_planes, 256), np.uint8)
    prev_ok = np.zeros((n_planes, 1), np.bool_)
    g_lo, g_hi = g * GROUP, min(g * GROUP + GROUP, n_blocks)
    gk, gfreq, gpresent = _group_model(planes, words, kind, itemsize, numel, block_size, g_lo, g_hi, L, rows, cols,
                                       has_col, ctx, sym)
    owner = -1
    hist = np.zeros((rans_scale.N_CTX, 256), np.int64)
    for b in range(g_lo, g_hi):
        start = b * block_size
        n = min(block_size, numel - start)
        split_block(words, kind, itemsize, start, n, planes)
        pos = b * cap
        max_payload = (n * keep_num) // 1024
        p0 = planes[0]
        const = True
        for i in range(1, n):
            if p0[i] != p0[0]:
                const = False
                break
        size = 0
        if const:
            tmp[pos] = MODE_CONST
            tmp[pos + 1] = p0[0]
            size = 2
        elif gk >= 0:
            block_symbols(p0, planes[1], n, start, L, rows, cols, has_col, ctx, sym, hist)
            ref = 0 if owner < 0 else b - owner
            pay = encode_payload(n, gk, gfreq, ref, gpresent, L, cols, has_col, rows, start // L,
                                            (start + n - 1) // L, ctx, sym, planes[1], scratch, 0, wbuf)
            if pay < max_payload:
                tmp[pos] = rans_scale.MODE
                _put_u32(tmp, pos + 1, pay)
                _copy(tmp, pos + 5, scratch, pay)
                size = pay + 5
                if owner < 0:
                    owner = b
        if size == 0:
            tmp[pos] = MODE_RAW
            _copy(tmp, pos + 1, p0, n)
            size = n + 1
        pos += size
        for p in range(1, n_planes):
            pos += encode_plane(planes[p], n, MODE_RANS, max_payload, tmp, pos, scratch, wbuf, prev[p], prev_ok[p])
        sizes[b] = pos - b * cap
        csum[b] = sum32_range(u8, u32, start * itemsize, (start + n) * itemsize)
