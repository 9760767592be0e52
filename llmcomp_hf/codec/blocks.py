"""Block drivers: split → model → code every plane of every block, in parallel, and back.

Blocks are processed in groups of ``GROUP`` consecutive blocks; threads take whole groups. Inside
a group a Huffman plane may reuse the previous block's code table (the encoder decides, the
decoder notices identical table bytes and skips the rebuild). Groups are fixed, so the encoded
bytes do not depend on the thread count. Errors inside kernels are returned per block as
(code, plane) and raised by api.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

import llmcomp_hf.codec.huffman as huffman
import llmcomp_hf.codec.rans as rans
import llmcomp_hf.codec.rans_ctx as rans_ctx
import llmcomp_hf.codec.rans_scale as rans_scale
from llmcomp_hf.codec.checksum import sum32_range
from llmcomp_hf.coders import CODERS, MODE_RANS_SCALE
from llmcomp_hf.codec.models import (
    BITMAP_BYTES,
    RANS_SCALE,
    histogram,
    huffman_lengths,
    quarter_histogram,
    rans_frequencies,
    total_counts,
)
from llmcomp_hf.codec.planes import KIND_BYTES, merge_block, split_block

MODE_RAW, MODE_CONST, MODE_HUFFMAN, MODE_RANS, MODE_RANS_CTX = 0, 1, 2, 3, 4
CODER_IDS = {name: c.mode for name, c in CODERS.items()}  # the kernels' coder argument: its section mode
SLOTS_CTX = RANS_SCALE  # mode 4's tables start here in a thread's slots; mode 5's after them
SLOTS_SCALE = (1 + rans_ctx.N_CTX) * RANS_SCALE
GROUP = 16
ERR_MODE = -4
ERR_TRAILING = -5
ERROR_TEXT = {
    huffman.ERR_TRUNCATED: "section runs past the end of the block",
    huffman.ERR_TABLE: "invalid code table",
    huffman.ERR_STREAM: "entropy-coded stream does not decode to its exact length",
    ERR_MODE: "unknown section mode (or a mode not allowed for this plane)",
    ERR_TRAILING: "bytes left over after the last plane",
}


@njit(cache=True, nogil=True)
def _put_u32(out, pos, v):
    for b in range(4):
        out[pos + b] = (v >> (8 * b)) & 0xFF


@njit(cache=True, nogil=True)
def _copy(dst, at, src, n):
    """``dst[at:at+n] = src[:n]`` as a plain loop, which LLVM vectorises (numba's slice assignment
    copies ~10x slower)."""
    d = dst[at : at + n]
    for i in range(np.uint64(min(n, d.shape[0], src.shape[0]))):
        d[i] = src[i]


@njit(cache=True, nogil=True)
def _huffman_plan(counts, n, prev, prev_ok):
    """Code lengths for this block: the previous block's table when it costs < 0.8% more bits."""
    own = huffman_lengths(counts)
    own_bits = huffman.coded_bits(counts, own)
    if prev_ok:
        prev_bits = huffman.coded_bits(counts, prev)
        if prev_bits >= 0 and prev_bits <= own_bits + own_bits // 128:
            return prev, prev_bits
    return own, own_bits


@njit(cache=True, nogil=True)
def _huffman_may_pay(counts, n, k, max_payload) -> bool:
    """False when even the entropy bound cannot beat ``max_payload`` (then the plane goes raw).

    Any prefix code needs at least the order-0 entropy, and the table needs at least the bitmap
    and the lengths of the ``k`` present symbols, so skipping the table build here never changes
    the output; it saves building a 256-symbol table for planes that stay raw (bf16 mantissas).
    Two cheap bounds settle most planes without a log per symbol: the entropy is at most log2(k)
    bits per symbol (small alphabets pass) and at least the collision entropy -log2(sum p^2)
    (near-uniform planes fail).
    """
    head = BITMAP_BYTES + (k + 1) // 2 + 12
    if head + n * np.log2(k) / 8.0 + 1.0 < max_payload:
        return True
    squares = 0
    for s in range(256):
        squares += counts[s] * counts[s]
    if head + (n * np.log2(n * n / squares) * (1.0 - 1e-9) - 1.0) / 8.0 >= max_payload:
        return False
    entropy_bits = 0.0
    for s in range(256):
        if counts[s] > 0:
            entropy_bits += counts[s] * np.log2(n / counts[s])
    lower = head + (entropy_bits * (1.0 - 1e-9) - 1.0) / 8.0
    return lower < max_payload


@njit(cache=True, nogil=True)
def plan_plane(plane, n, coder, max_payload, prev, prev_ok):
    """The encoder's model choice for one plane: (counts, counts per quarter, number of symbols,
    Huffman or not).

    When the plane is Huffman-coded its code lengths are left in ``prev`` (``prev_ok[0]`` set),
    which is where the next block of the group looks for a table to reuse; otherwise both stay.
    """
    quarters = quarter_histogram(plane, n)
    counts = total_counts(quarters)
    k = 0
    for s in range(256):
        if counts[s] > 0:
            k += 1
    if k > 1 and coder == MODE_HUFFMAN and _huffman_may_pay(counts, n, k, max_payload):
        lengths, bits = _huffman_plan(counts, n, prev, prev_ok[0])
        if huffman.encoded_size(bits, lengths) < max_payload:
            prev[:] = lengths
            prev_ok[0] = True
            return counts, quarters, k, True
    return counts, quarters, k, False


@njit(cache=True, nogil=True)
def encode_plane(plane, n, coder, max_payload, out, pos, scratch, words, prev, prev_ok) -> int:
    """Encode one plane section at ``out[pos]``; return its size (0 is never returned).

    Coded only if the payload beats ``max_payload``. ``prev``/``prev_ok`` carry the Huffman
    table of this plane in the previous block (see plan_plane).
    """
    counts, quarters, k, use_huffman = plan_plane(plane, n, coder, max_payload, prev, prev_ok)
    if k == 1:
        out[pos] = MODE_CONST
        out[pos + 1] = plane[0]
        return 2
    if use_huffman:
        size = huffman.encode_section(plane, n, prev, quarters, out, pos + 5)
        out[pos] = MODE_HUFFMAN
        _put_u32(out, pos + 1, size)
        return size + 5
    elif coder == MODE_RANS:
        freq = rans_frequencies(counts, n)
        size = rans.encode_section(plane, n, counts, freq, scratch, 0, words)
        if size < max_payload:
            out[pos] = MODE_RANS
            _put_u32(out, pos + 1, size)
            _copy(out, pos + 5, scratch, size)
            return size + 5
    out[pos] = MODE_RAW
    _copy(out, pos + 1, plane, n)
    return n + 1


@njit(cache=True, nogil=True)
def _group_model(words, kind, numel, block_size, first_block, last_block, hist):
    """Context histograms of blocks ``[first_block, last_block)`` (``hist[j]``) and the group's
    tables: (k, freq[2**k, 256], present[256]); k = -1 when plane 0 has < 2 symbols in the group.

    k (0..ENCODER_MAX_CTX_BITS) minimises the estimated coded size plus table bytes over the whole group.
    """
    total = np.zeros((rans_ctx.N_CTX, 256), np.int64)
    for b in range(first_block, last_block):
        start = b * block_size
        h = hist[b - first_block]
        h[:] = 0
        rans_ctx.ctx_histogram(words, kind, start, min(block_size, numel - start), h)
        total += h
    present = np.zeros(256, np.int64)
    m = 0
    for s in range(256):
        for c in range(rans_ctx.N_CTX):
            present[s] += total[c, s]
        if present[s] > 0:
            m += 1
    best_k, best_cost = -1, np.int64(0)
    best = np.zeros((1, 256), np.int64)
    if m < 2:
        return best_k, best, present
    for k in range(rans_ctx.ENCODER_MAX_CTX_BITS + 1):
        counts = rans_ctx.fold(total, k)
        freq = rans_ctx.tables(counts, present)
        c = rans_ctx.cost(counts, freq) + rans_ctx.table_bytes(freq, present) * 8 * rans_ctx.COST_ONE
        if best_k < 0 or c < best_cost:
            best_k, best_cost, best = k, c, freq
    return best_k, best, present


@njit(cache=True, nogil=True)
def encode_plane0_ctx(planes, n, hist, gk, gfreq, gpresent, ref, max_payload, out, pos, scratch, words,
                      b, tab_block, tab_k, tab_freq, n_tab) -> tuple[int, bool, int, np.ndarray]:
    """Plane 0 of a float block under the rans coder: const, mode 3, mode 4 or raw, the smallest
    by estimate (integer costs, so the reference encoder takes the same decisions).

    ``ref`` > 0: block ``b - ref`` of the group holds the group tables (this block may point to
    them); ``ref == 0``: none yet, and this block stores them if mode 4 with them wins. The
    ``n_tab`` earlier blocks ``tab_block[t]`` of the group that store tables (``tab_k[t]``,
    ``tab_freq[t]``) may be pointed to as well. Returns (section size, whether this block now
    holds the group tables, k of the own tables it now stores or -1, those tables).
    """
    plane = planes[0]
    counts = histogram(plane, n)
    m = 0
    for s in range(256):
        if counts[s] > 0:
            m += 1
    own, own_k = gfreq, gk
    if m == 1:
        out[pos] = MODE_CONST
        out[pos + 1] = plane[0]
        return 2, False, -1, own
    unit = 8 * rans_ctx.COST_ONE
    freq3 = rans_frequencies(counts, n)
    best = (5 + BITMAP_BYTES + 2 * m + 16) * unit
    for s in range(256):
        if counts[s] > 0:
            best += counts[s] * rans_ctx.COST[freq3[s]]
    choice = 0  # 0 mode 3, 1 group tables, 2 own tables, 3 an earlier block's tables
    bc = rans_ctx.fold(hist, gk)
    if gk >= 0:
        c = rans_ctx.cost(bc, gfreq) + (5 + 1 + 16) * unit
        if ref == 0:
            c += rans_ctx.table_bytes(gfreq, gpresent) * unit
        if c < best:
            best, choice = c, 1
    if gk >= 0 and ref > 0:  # the block's own tables, with its best k
        for k in range(rans_ctx.ENCODER_MAX_CTX_BITS + 1):
            ck = rans_ctx.fold(hist, k)
            fk = rans_ctx.tables(ck, counts)
            c = rans_ctx.cost(ck, fk) + (5 + 1 + 16 + rans_ctx.table_bytes(fk, counts)) * unit
            if c < best:
                best, choice, own, own_k = c, 2, fk, k
    pick = -1
    if gk >= 0:
        for t in range(n_tab):
            tk = tab_k[t]
            ct = rans_ctx.cost_if_codable(rans_ctx.fold(hist, tk), tab_freq[t, : 1 << tk])
            if ct >= 0 and ct + (5 + 1 + 16) * unit < best:
                best, choice, pick = ct + (5 + 1 + 16) * unit, 3, t
    if choice == 0:
        size = rans.encode_section(plane, n, counts, freq3, scratch, 0, words)
        mode = MODE_RANS
    elif choice == 1:
        size = rans_ctx.encode_payload(plane, planes[1], n, gk, gfreq, ref, gpresent, scratch, 0, words)
        mode = MODE_RANS_CTX
    elif choice == 2:
        size = rans_ctx.encode_payload(plane, planes[1], n, own_k, own, 0, counts, scratch, 0, words)
        mode = MODE_RANS_CTX
    else:
        tk = tab_k[pick]
        size = rans_ctx.encode_payload(plane, planes[1], n, tk, tab_freq[pick, : 1 << tk], b - tab_block[pick], counts,
                                       scratch, 0, words)
        mode = MODE_RANS_CTX
    if size < max_payload:
        out[pos] = mode
        _put_u32(out, pos + 1, size)
        _copy(out, pos + 5, scratch, size)
        return size + 5, choice == 1 and ref == 0, own_k if choice == 2 else -1, own
    out[pos] = MODE_RAW
    _copy(out, pos + 1, plane, n)
    return n + 1, False, -1, own


@njit(cache=True, nogil=True)
def encode_groups(words, kind, itemsize, numel, block_size, n_planes, coder, keep_num, u8, u32, g, part, parts, tmp, cap,
                  sizes, csum):
    """Encode part ``part`` of ``parts`` (a run of consecutive blocks) of group ``g`` into the
    ``cap``-sized block slots of ``tmp``.

    A later part first replays the Huffman table choices of the group's earlier blocks (histograms
    only, nothing written), so the bytes never depend on how a group is split. rans-ctx groups
    (whose blocks share tables chosen over the whole group) are encoded whole: ``parts`` must be 1.
    """
    n_blocks = sizes.shape[0]
    planes = np.empty((n_planes, block_size), np.uint8)
    scratch = np.empty(2 * block_size + 1024 + rans_ctx.TABLE_MAX_BYTES, np.uint8)  # mode-4 tables are written before the size check
    wbuf = np.empty(block_size + 8, np.uint16)
    prev = np.zeros((n_planes, 256), np.uint8)
    prev_ok = np.zeros((n_planes, 1), np.bool_)  # no table to reuse at the group's start
    with_ctx = coder == MODE_RANS_CTX and kind != KIND_BYTES
    if coder == MODE_RANS_CTX:  # every other plane (and every plane of a non-float) as with rans
        coder = MODE_RANS
    hist = np.zeros((GROUP if with_ctx else 1, rans_ctx.N_CTX, 256), np.int64)
    tab_block = np.zeros(GROUP, np.int64)  # blocks of the group that store their own tables
    tab_k = np.zeros(GROUP, np.int64)
    tab_freq = np.zeros((GROUP if with_ctx else 1, rans_ctx.N_CTX, 256), np.int64)
    g_lo, g_hi = g * GROUP, min(g * GROUP + GROUP, n_blocks)
    b_lo, b_hi = g_lo + part * (g_hi - g_lo) // parts, g_lo + (part + 1) * (g_hi - g_lo) // parts
    owner, gk = -1, -1
    gfreq = np.zeros((1, 256), np.int64)
    gpresent = np.zeros(256, np.int64)
    n_tab = 0
    if with_ctx:
        gk, gfreq, gpresent = _group_model(words, kind, numel, block_size, g_lo, g_hi, hist)
    for b in range(g_lo, b_lo if coder == MODE_HUFFMAN else g_lo):  # replay: the tables in prev
        start = b * block_size
        n = min(block_size, numel - start)
        split_block(words, kind, itemsize, start, n, planes)
        for p in range(n_planes):
            plan_plane(planes[p], n, coder, (n * keep_num) // 1024, prev[p], prev_ok[p])
    for b in range(b_lo, b_hi):
        start = b * block_size
        n = min(block_size, numel - start)
        split_block(words, kind, itemsize, start, n, planes)
        pos = b * cap
        max_payload = (n * keep_num) // 1024
        p_first = 0
        if with_ctx:
            size, owns, own_k, own = encode_plane0_ctx(planes, n, hist[b - g_lo], gk, gfreq, gpresent,
                                                       0 if owner < 0 else b - owner, max_payload, tmp, pos, scratch,
                                                       wbuf, b, tab_block, tab_k, tab_freq, n_tab)
            if owns:
                owner = b
            if own_k >= 0:  # later blocks of the group may point to these tables
                tab_block[n_tab], tab_k[n_tab] = b, own_k
                tab_freq[n_tab, : 1 << own_k] = own
                n_tab += 1
            pos += size
            p_first = 1
        for p in range(p_first, n_planes):
            pos += encode_plane(planes[p], n, coder, max_payload, tmp, pos, scratch, wbuf, prev[p], prev_ok[p])
        sizes[b] = pos - b * cap
        csum[b] = sum32_range(u8, u32, start * itemsize, (start + n) * itemsize)


def block_capacity(block_size: int, n_planes: int) -> int:
    """Bytes reserved per block while encoding: every plane raw, or coded just below raw."""
    return n_planes * (block_size + 5) + 16


@njit(cache=True, nogil=True)
def compact(tmp, cap, sizes):
    """Concatenate the used part of every block slot: (data uint8, index int64)."""
    n_blocks = sizes.shape[0]
    index = np.zeros(n_blocks + 1, np.int64)
    for b in range(n_blocks):
        index[b + 1] = index[b] + sizes[b]
    data = np.empty(index[n_blocks], np.uint8)
    for b in range(n_blocks):
        _copy(data, index[b], tmp[b * cap : b * cap + sizes[b]], sizes[b])
    return data, index


@njit(cache=True, nogil=True)
def decode_block(data, index, b, block_size, n, kind, n_planes, planes, src, single, multi, memo, slots, memo4):
    """Decode the sections of block ``b`` (``data[index[b]:index[b+1]]``); returns (0, -1) or
    (error code, plane).

    Raw planes are not copied: ``src[p]`` is set to their offset in ``data`` (else -1 and the
    plane is in ``planes[p]``). A mode-4 or mode-5 section (plane 0 of a float only) is decoded
    last, once plane 1, its context, is known. ``memo4`` holds mode 4's memo, then mode 5's.
    """
    lo, hi = index[b], index[b + 1]
    pos = lo
    ctx_pos, ctx_end, ctx_mode = -1, -1, 0
    for p in range(n_planes):
        src[p] = -1
        if pos >= hi:
            return huffman.ERR_TRUNCATED, p
        mode = data[pos]
        pos += 1
        if mode == MODE_RAW:
            if pos + n > hi:
                return huffman.ERR_TRUNCATED, p
            src[p] = pos
            pos += n
        elif mode == MODE_CONST:
            if pos + 1 > hi:
                return huffman.ERR_TRUNCATED, p
            planes[p, :n] = data[pos]
            pos += 1
        elif mode == MODE_HUFFMAN or mode == MODE_RANS or mode == MODE_RANS_CTX or mode == MODE_RANS_SCALE:
            if pos + 4 > hi:
                return huffman.ERR_TRUNCATED, p
            size = 0
            for t in range(4):
                size |= np.int64(data[pos + t]) << (8 * t)
            pos += 4
            if pos + size > hi:
                return huffman.ERR_TRUNCATED, p
            if mode == MODE_HUFFMAN:
                err = huffman.decode_section(data, pos, pos + size, n, planes[p], single[p], multi[p], memo[p])
            elif mode == MODE_RANS:
                err = rans.decode_section(data, pos, pos + size, n, planes[p], slots)
            elif p != 0 or kind == KIND_BYTES:
                return ERR_MODE, p
            else:
                ctx_pos, ctx_end, ctx_mode = pos, pos + size, mode
                err = 0
            if err < 0:
                return err, p
            pos += size
        else:
            return ERR_MODE, p
    if pos != hi:
        return ERR_TRAILING, n_planes - 1
    if ctx_pos >= 0:
        ctx = data[src[1] : src[1] + n] if src[1] >= 0 else planes[1, :n]
        if ctx_mode == MODE_RANS_CTX:
            err = rans_ctx.decode_payload(data, index, b, ctx_pos, ctx_end, n, ctx, planes[0], slots[SLOTS_CTX:SLOTS_SCALE],
                                          memo4[: rans_ctx.MEMO_BYTES])
        else:
            err = rans_scale.decode_payload(data, index, b, block_size, ctx_pos, ctx_end, n, ctx, planes[0],
                                            slots[SLOTS_SCALE:], memo4[rans_ctx.MEMO_BYTES :])
        if err < 0:
            return err, 0
    return 0, -1


def decode_scratch(n_threads: int, n_planes: int, block_size: int) -> tuple[np.ndarray, ...]:
    """Per-thread decode buffers (planes, raw offsets, Huffman tables + memo, rANS slots: mode 3's
    table, mode 4's, then mode 5's tables and column map; mode-4 table memo then mode-5 model memo).

    Kept by the caller and passed to every decode, so decoding allocates nothing per call.
    """
    return (
        np.empty((n_threads, n_planes, block_size), np.uint8),
        np.empty((n_threads, n_planes), np.int64),
        np.empty((n_threads, n_planes, huffman.LUT_SIZE), np.uint16),
        np.empty((n_threads, n_planes, huffman.MULTI_SIZE), np.uint64),
        np.zeros((n_threads, n_planes, huffman.MEMO_SIZE), np.uint8),
        np.empty((n_threads, SLOTS_SCALE + rans_scale.SLOTS), np.uint32),
        np.zeros((n_threads, rans_ctx.MEMO_BYTES + rans_scale.MEMO_BYTES), np.uint8),
    )


@njit(cache=True, nogil=True)
def decode_range(data, index, kind, itemsize, numel, block_size, n_planes, words, u8, u32, b_lo, b_hi, errs, err_plane, csum,
                 planes, src, single, multi, memo, slots, memo4):
    """Decode blocks ``[b_lo, b_hi)`` into ``words`` with one thread's scratch (see decode_scratch).

    Blocks are self-contained, so any range decodes; consecutive blocks that share a table (the
    encoder's groups) skip the rebuild. The memo only ever matches the exact table bytes that
    ``single``/``multi`` were built from, so it may carry over between calls and tensors.
    """
    for b in range(b_lo, b_hi):
        start = b * block_size
        n = min(block_size, numel - start)
        err, plane = decode_block(data, index, b, block_size, n, kind, n_planes, planes, src, single, multi, memo, slots,
                                  memo4)
        if err < 0:
            errs[b] = err
            err_plane[b] = plane
            for p in range(n_planes):
                memo[p, 0] = 0
            memo4[0] = 0
            memo4[1] = 0
        else:
            merge_block(planes, src, data, kind, itemsize, start, n, words)
            csum[b] = sum32_range(u8, u32, start * itemsize, (start + n) * itemsize)


@njit(cache=True, nogil=True, parallel=True)
def decode_blocks(data, index, kind, itemsize, numel, block_size, n_planes, words, u8, u32, errs, err_plane, csum, n_threads,
                  planes, src, single, multi, memo, slots, memo4):
    """Decode every block into ``words``, filling per-block (error code, error plane, checksum).

    Each thread takes one contiguous run of blocks (one table rebuild per run, not per block).
    """
    n_blocks = index.shape[0] - 1
    nt = max(1, min(n_threads, n_blocks))
    for t in prange(nt):
        decode_range(data, index, kind, itemsize, numel, block_size, n_planes, words, u8, u32,
                     t * n_blocks // nt, (t + 1) * n_blocks // nt, errs, err_plane, csum,
                     planes[t], src[t], single[t], multi[t], memo[t], slots[t], memo4[t])


@njit(cache=True, nogil=True)
def decode_block_list(data, index, kind, itemsize, numel, block_size, n_planes, block_ids, words, errs,
                      planes, src, single, multi, memo, slots, memo4):
    """Decode the listed blocks; block ``block_ids[j]`` lands at element ``j * block_size`` of ``words``.

    For partial decodes (an embedding's rows): no checksum, since it covers the whole tensor.
    Scratch as in decode_range (one thread's slice of decode_scratch).
    """
    n_blocks = index.shape[0] - 1
    for j in range(block_ids.shape[0]):
        b = block_ids[j]
        if b < 0 or b >= n_blocks:
            errs[j] = ERR_MODE
            continue
        n = min(block_size, numel - b * block_size)
        err, plane = decode_block(data, index, b, block_size, n, kind, n_planes, planes, src, single, multi, memo, slots,
                                  memo4)
        if err < 0:
            errs[j] = err
            for p in range(n_planes):
                memo[p, 0] = 0
            memo4[0] = 0
            memo4[1] = 0
        else:
            merge_block(planes, src, data, kind, itemsize, j * block_size, n, words)
