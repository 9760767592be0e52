"""Entropy models: block histograms and the code tables built from them.

Kept apart from the coders (huffman.py, rans.py) so a coder can change without touching the
models. All functions are numba-jitted and also callable from plain Python (the reference
implementation uses them too, so both paths build identical tables).
"""

from __future__ import annotations

import numpy as np
from numba import njit

HUFF_MAX_LEN = 11  # longest Huffman code; the decode table has 2**11 entries
RANS_SCALE_BITS = 12  # rANS frequencies sum to 4096
RANS_SCALE = 1 << RANS_SCALE_BITS
BITMAP_BYTES = 32  # presence bitmap of the 256 byte symbols


@njit(cache=True, nogil=True)
def quarter_histogram(plane: np.ndarray, n: int) -> np.ndarray:
    """Counts of each byte value in each quarter of ``plane[:n]`` (int32[4, 256]).

    Quarters as the Huffman sub-streams cut them: ``[st*q, (st+1)*q)`` clipped to ``n``, with
    ``q = ceil(n / 4)``. Counted into 8 sub-histograms (quarter, even/odd position) fed in turn,
    so that runs of one value rarely wait on the previous increment of the same counter.
    """
    sub = np.zeros((8, 256), np.int32)
    h0, h1, h2, h3, h4, h5, h6, h7 = sub[0], sub[1], sub[2], sub[3], sub[4], sub[5], sub[6], sub[7]
    q = (n + 3) // 4
    c1, c2, c3 = min(q, n), min(2 * q, n), min(3 * q, n)
    a, b, c, d = plane[:c1], plane[c1:c2], plane[c2:c3], plane[c3:n]
    m = np.uint64(n - c3)  # the last quarter is the shortest
    m8 = m - m % np.uint64(8)
    i = np.uint64(0)
    while i < m8:
        for t in range(0, 8, 2):
            j = i + np.uint64(t)
            k = j + np.uint64(1)
            h0[a[j]] += 1
            h1[b[j]] += 1
            h2[c[j]] += 1
            h3[d[j]] += 1
            h4[a[k]] += 1
            h5[b[k]] += 1
            h6[c[k]] += 1
            h7[d[k]] += 1
        i += np.uint64(8)
    for j in range(m8, m):
        h3[d[j]] += 1
    for j in range(m8, np.uint64(c1)):
        h0[a[j]] += 1
    for j in range(m8, np.uint64(c2 - c1)):
        h1[b[j]] += 1
    for j in range(m8, np.uint64(c3 - c2)):
        h2[c[j]] += 1
    for s in range(256):
        h0[s] += h4[s]
        h1[s] += h5[s]
        h2[s] += h6[s]
        h3[s] += h7[s]
    return sub[:4]


@njit(cache=True, nogil=True)
def total_counts(sub: np.ndarray) -> np.ndarray:
    """Sum of the sub-histograms ``sub[4, 256]`` (int64[256])."""
    counts = np.empty(256, np.int64)
    for s in range(256):
        counts[s] = np.int64(sub[0, s]) + sub[1, s] + sub[2, s] + sub[3, s]
    return counts


@njit(cache=True, nogil=True)
def histogram(plane: np.ndarray, n: int) -> np.ndarray:
    """Counts of each byte value in ``plane[:n]`` (int64[256])."""
    return total_counts(quarter_histogram(plane, n))


@njit(cache=True, nogil=True)
def _radix_sort_keys(keys: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """``keys`` (weight << 8 | symbol, in symbol order) sorted by weight, ties by symbol.

    Stable LSD radix sort on the weight bytes; returns ``keys`` or ``tmp``, whichever holds the
    result (the other is clobbered).
    """
    k = keys.shape[0]
    top = 0
    for i in range(k):
        top = max(top, keys[i])
    cnt = np.empty(256, np.int64)
    shift = 8
    while (top >> shift) > 0:
        cnt[:] = 0
        for i in range(k):
            cnt[(keys[i] >> shift) & 0xFF] += 1
        at = 0
        for d in range(256):
            at, cnt[d] = at + cnt[d], at
        for i in range(k):
            d = (keys[i] >> shift) & 0xFF
            tmp[cnt[d]] = keys[i]
            cnt[d] += 1
        keys, tmp = tmp, keys
        shift += 8
    return keys


@njit(cache=True, nogil=True)
def _huffman_tree_lengths(keys: np.ndarray, lengths: np.ndarray, w: np.ndarray, parent: np.ndarray) -> int:
    """Unlimited Huffman code lengths of the symbols in ``keys`` (weight << 8 | symbol, sorted);
    returns the longest length. ``w``/``parent`` are scratch of >= 2k - 1 entries.
    """
    k = keys.shape[0]
    # Two-queue construction: leaves 0..k-1 (sorted), internal nodes k..2k-2 (created sorted).
    for i in range(k):
        w[i] = keys[i] >> 8
    leaf, node = 0, k
    for nxt in range(k, 2 * k - 1):
        total = 0
        for _ in range(2):  # ties go to the leaf
            if leaf < k and (node >= nxt or w[leaf] <= w[node]):
                pick = leaf
                leaf += 1
            else:
                pick = node
                node += 1
            total += w[pick]
            parent[pick] = nxt
        w[nxt] = total
    depth = w  # reused: the weights are no longer needed
    depth[2 * k - 2] = 0
    for i in range(2 * k - 3, -1, -1):
        depth[i] = depth[parent[i]] + 1
    longest = 0
    for i in range(k):
        lengths[keys[i] & 0xFF] = depth[i]
        longest = max(longest, depth[i])
    return longest


@njit(cache=True, nogil=True)
def huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Length-limited (<= HUFF_MAX_LEN) Huffman code lengths (uint8[256]) for >= 2 present symbols.

    Counts are flattened (halved, floored at 1) until the tree fits the limit: near-optimal and
    always terminates because 256 equal weights need only 8 bits. Leaves are ordered by weight,
    ties by symbol (radix sort first; flattening keeps that order except inside new ties, which
    an insertion sort mends).
    """
    buf = np.empty((2, 256), np.int64)
    k = 0
    for s in range(256):
        if counts[s] > 0:
            buf[0, k] = (np.int64(counts[s]) << 8) | s
            k += 1
    lengths = np.zeros(256, np.int64)
    if k < 2:
        return lengths.astype(np.uint8)
    keys = _radix_sort_keys(buf[0, :k], buf[1, :k])
    scratch = np.empty((2, 2 * k), np.int64)
    while _huffman_tree_lengths(keys, lengths, scratch[0], scratch[1]) > HUFF_MAX_LEN:
        for i in range(k):
            key = keys[i]
            key = ((((key >> 9) | 1)) << 8) | (key & 0xFF)  # weight (w >> 1) | 1
            j = i
            while j > 0 and keys[j - 1] > key:
                keys[j] = keys[j - 1]
                j -= 1
            keys[j] = key
    return lengths.astype(np.uint8)


@njit(cache=True, nogil=True)
def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes, bit-reversed for LSB-first packing (uint32[256]); 0 for absent symbols."""
    bl_count = np.zeros(HUFF_MAX_LEN + 1, np.int64)
    for s in range(256):
        bl_count[lengths[s]] += 1
    bl_count[0] = 0
    next_code = np.zeros(HUFF_MAX_LEN + 2, np.int64)
    code = 0
    for ln in range(1, HUFF_MAX_LEN + 1):
        code = (code + bl_count[ln - 1]) << 1
        next_code[ln] = code
    rev = np.zeros(256, np.uint32)
    for s in range(256):
        ln = lengths[s]
        if ln:
            c = next_code[ln]
            next_code[ln] += 1
            r = 0
            for _ in range(ln):
                r = (r << 1) | (c & 1)
                c >>= 1
            rev[s] = r
    return rev


@njit(cache=True, nogil=True)
def rans_frequencies(counts: np.ndarray, n: int) -> np.ndarray:
    """Quantise counts to frequencies summing to RANS_SCALE, each present symbol >= 1 (int64[256])."""
    freq = np.zeros(256, np.int64)
    total = 0
    best = 0
    for s in range(256):
        if counts[s] > 0:
            f = (counts[s] * RANS_SCALE) // n
            freq[s] = f if f > 0 else 1
            total += freq[s]
            if counts[s] > counts[best] or counts[best] == 0:
                best = s
    if total <= RANS_SCALE:
        freq[best] += RANS_SCALE - total
        return freq
    excess = total - RANS_SCALE
    while excess > 0:  # take from the largest frequencies; terminates: at most 256 forced ones
        top = 0
        for s in range(256):
            if freq[s] > freq[top]:
                top = s
        take = min(excess, freq[top] - 1)
        freq[top] -= take
        excess -= take
    return freq


@njit(cache=True, nogil=True)
def write_bitmap(counts: np.ndarray, out: np.ndarray, pos: int) -> int:
    """Write the 32-byte presence bitmap at ``out[pos]``; return the number of present symbols."""
    k = 0
    for b in range(BITMAP_BYTES):
        byte = 0
        for t in range(8):
            if counts[b * 8 + t] > 0:
                byte |= 1 << t
                k += 1
        out[pos + b] = byte
    return k


@njit(cache=True, nogil=True)
def read_bitmap(data: np.ndarray, pos: int, syms: np.ndarray) -> int:
    """Fill ``syms`` with the present symbols (ascending) from the bitmap at ``data[pos]``; return k."""
    k = 0
    for b in range(BITMAP_BYTES):
        byte = data[pos + b]
        for t in range(8):
            if (byte >> t) & 1:
                syms[k] = b * 8 + t
                k += 1
    return k
