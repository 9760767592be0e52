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
def histogram(plane: np.ndarray, n: int) -> np.ndarray:
    """Counts of each byte value in ``plane[:n]`` (int64[256]).

    Four interleaved sub-histograms avoid the store-to-load stall on runs of one value.
    """
    sub = np.zeros((4, 256), np.int32)
    body = n - n % 4
    for i in range(0, body, 4):
        sub[0, plane[i]] += 1
        sub[1, plane[i + 1]] += 1
        sub[2, plane[i + 2]] += 1
        sub[3, plane[i + 3]] += 1
    for i in range(body, n):
        sub[0, plane[i]] += 1
    counts = np.zeros(256, np.int64)
    for s in range(256):
        counts[s] = np.int64(sub[0, s]) + sub[1, s] + sub[2, s] + sub[3, s]
    return counts


@njit(cache=True, nogil=True)
def _huffman_tree_lengths(counts: np.ndarray, lengths: np.ndarray) -> int:
    """Unlimited Huffman code lengths for the present symbols; returns the longest length."""
    k = 0
    for s in range(256):
        if counts[s] > 0:
            k += 1
    syms = np.empty(k, np.int64)
    weights = np.empty(k, np.int64)
    j = 0
    for s in range(256):
        if counts[s] > 0:
            syms[j] = s
            weights[j] = counts[s]
            j += 1
    order = np.argsort(weights, kind="mergesort")  # stable: ties broken by symbol value
    # Two-queue construction: leaves 0..k-1 (sorted), internal nodes k..2k-2 (created sorted).
    w = np.empty(2 * k - 1, np.int64)
    parent = np.zeros(2 * k - 1, np.int64)
    for i in range(k):
        w[i] = weights[order[i]]
    leaf, node = 0, k
    for nxt in range(k, 2 * k - 1):
        pick = np.empty(2, np.int64)
        for t in range(2):
            if leaf < k and (node >= nxt or w[leaf] <= w[node]):
                pick[t] = leaf
                leaf += 1
            else:
                pick[t] = node
                node += 1
        w[nxt] = w[pick[0]] + w[pick[1]]
        parent[pick[0]] = nxt
        parent[pick[1]] = nxt
    depth = np.zeros(2 * k - 1, np.int64)
    longest = 0
    for i in range(2 * k - 3, -1, -1):
        depth[i] = depth[parent[i]] + 1
    for i in range(k):
        lengths[syms[order[i]]] = depth[i]
        longest = max(longest, depth[i])
    return longest


@njit(cache=True, nogil=True)
def huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Length-limited (<= HUFF_MAX_LEN) Huffman code lengths (uint8[256]) for >= 2 present symbols.

    Counts are flattened (halved, floored at 1) until the tree fits the limit: near-optimal and
    always terminates because 256 equal weights need only 8 bits.
    """
    work = counts.copy()
    lengths = np.zeros(256, np.int64)
    while True:
        lengths[:] = 0
        if _huffman_tree_lengths(work, lengths) <= HUFF_MAX_LEN:
            break
        for s in range(256):
            if work[s] > 0:
                work[s] = (work[s] >> 1) | 1
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
