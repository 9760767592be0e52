"""Decode a run of blocks into a caller's small buffer, without the checksum: for weights kept encoded.

A layer that keeps its weight encoded (``decode="on_the_fly"``) decodes it on every forward, a few
blocks at a time into a scratch buffer that stays in cache while the rows just decoded are used
(``llmcomp_hf.fused``). The whole-tensor checksum is checked once, when the model loads; here it
would cost more than the decoding itself (a 2.9M-element bf16 tensor on this project's 2-core VM:
1.5 ms of sum32 next to 1.3 ms of decode and merge), so these kernels skip it.

Each kernel checks its arguments against the arrays it writes (``words``, the per-block error
arrays, the plane scratch) before the first block, so a wrong range or a short buffer is an error
code, never a write out of bounds; the blocks themselves go through ``blocks.decode_block``, which
checks every read of the stream. The caller validates the header and index first
(``EncodedTensor.validate``), as for every decode.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import get_thread_id, njit, parallel_chunksize, prange

from llmcomp_hf.codec import huffman, rans_ctx
from llmcomp_hf.codec.api import kernel_threads, thread_scratch
from llmcomp_hf.codec.blocks import ERROR_TEXT, decode_block
from llmcomp_hf.codec.encoded import DTYPES, EncodedTensor
from llmcomp_hf.codec.models import RANS_SCALE
from llmcomp_hf.codec.planes import KIND_BYTES, layout_of, merge_block
from llmcomp_hf.errors import corrupt_block, where

ERR_ARGS = -6  # a range or buffer that does not fit (the caller's bug, not the stream's)
_NO_SCRATCH = 1 << 40  # added to the failure count by a thread without a scratch slice
UNIT = 2  # blocks a thread takes at a time in decode_span_parallel


@njit(cache=True, nogil=True)
def span_fault(index, kind, itemsize, numel, block_size, n_planes, first, lo, hi, words, errs, err_plane,
               planes, src, single, multi, memo, slots, memo4) -> bool:
    """True when blocks ``[lo, hi)`` cannot be decoded into ``words`` at ``(b - first) * block_size``:
    a range outside the tensor, or a buffer (output, error arrays, one thread's scratch) too small."""
    n_blocks = index.shape[0] - 1
    if not (0 <= first <= lo <= hi <= n_blocks) or block_size <= 0:
        return True
    if hi - first > errs.shape[0] or hi - first > err_plane.shape[0]:
        return True
    if planes.shape[0] < n_planes or planes.shape[1] < block_size or src.shape[0] < n_planes:
        return True
    if single.shape[0] < n_planes or single.shape[1] < huffman.LUT_SIZE or multi.shape[0] < n_planes or \
            multi.shape[1] < huffman.MULTI_SIZE or memo.shape[0] < n_planes or memo.shape[1] < huffman.MEMO_SIZE:
        return True
    if slots.shape[0] < (1 + rans_ctx.N_CTX) * RANS_SCALE or memo4.shape[0] < rans_ctx.MEMO_BYTES:
        return True
    if hi > lo:
        end = min(hi * block_size, numel) - first * block_size  # elements written, from block ``first``
        per = itemsize if kind == KIND_BYTES else 1  # words are bytes for KIND_BYTES
        if end * per > words.shape[0]:
            return True
    return False


@njit(cache=True, nogil=True)
def decode_span(data, index, kind, itemsize, numel, block_size, n_planes, first, lo, hi, words, errs, err_plane,
                planes, src, single, multi, memo, slots, memo4) -> int:
    """Decode blocks ``[lo, hi)``: block ``b`` lands at element ``(b - first) * block_size`` of ``words``.

    Returns the number of blocks that did not decode (``errs[b - first]`` / ``err_plane[b - first]``
    get their error code and plane; their output is left partly written), or ``ERR_ARGS`` when the
    arguments do not fit (nothing decoded). Scratch as in ``blocks.decode_range`` (one thread's share
    of ``blocks.decode_scratch``); consecutive blocks sharing a Huffman table build it once.
    """
    if span_fault(index, kind, itemsize, numel, block_size, n_planes, first, lo, hi, words, errs, err_plane,
                  planes, src, single, multi, memo, slots, memo4):
        return ERR_ARGS
    failed = 0
    for b in range(lo, hi):
        n = min(block_size, numel - b * block_size)
        err, plane = decode_block(data, index, b, n, kind, n_planes, planes, src, single, multi, memo, slots, memo4)
        if err < 0:
            errs[b - first] = err
            err_plane[b - first] = plane
            failed += 1
            for p in range(n_planes):
                memo[p, 0] = 0
            memo4[0] = 0
            memo4[1] = 0
        else:
            merge_block(planes, src, data, kind, itemsize, (b - first) * block_size, n, words)
    return failed


@njit(cache=True, nogil=True, parallel=True)
def decode_span_parallel(data, index, kind, itemsize, numel, block_size, n_planes, lo, hi, words, errs, err_plane,
                         unit, planes, src, single, multi, memo, slots, memo4) -> int:
    """``decode_span`` with ``first = lo`` over numba's threads, ``unit`` consecutive blocks at a time.

    Scratch arrays have one slice per thread (``blocks.decode_scratch(threads, ...)``, ``threads`` at
    least numba's current thread count). Run with ``numba.parallel_chunksize(1)``, threads take units
    as they finish: when the cores are shared and one thread waits for its core, the others go on
    (split in equal halves, a 2-thread run waited for the later half; measured on this project's
    shared 2-core VM: 14.1 vs 15.2 ms for 500 blocks).
    """
    n_scratch = min(planes.shape[0], src.shape[0], single.shape[0], multi.shape[0], memo.shape[0], slots.shape[0],
                    memo4.shape[0])
    if unit < 1 or n_scratch < 1 or \
            span_fault(index, kind, itemsize, numel, block_size, n_planes, lo, lo, hi, words, errs, err_plane, planes[0],
                       src[0], single[0], multi[0], memo[0], slots[0], memo4[0]):
        return ERR_ARGS
    n_units = (hi - lo + unit - 1) // unit
    failed = 0
    for u in prange(n_units):
        t = get_thread_id()
        if t >= n_scratch:  # more threads than scratch slices: reported as ERR_ARGS below
            failed += _NO_SCRATCH
        else:
            a = lo + u * unit
            failed += decode_span(data, index, kind, itemsize, numel, block_size, n_planes, lo, a, min(hi, a + unit),
                                  words, errs, err_plane, planes[t], src[t], single[t], multi[t], memo[t], slots[t],
                                  memo4[t])
    return ERR_ARGS if failed >= _NO_SCRATCH else failed


class SpanDecoder:
    """The kernel arguments of one encoded tensor, for decoding runs of its blocks into small buffers.

    Build it from a validated EncodedTensor (``enc.validate()``), and validate again before decoding
    when the arrays may have been rewritten in place since.
    """

    def __init__(self, enc: EncodedTensor) -> None:
        itemsize, n_planes = DTYPES[enc.dtype]
        self.name = enc.name
        self.block_size = enc.header["block_size"]
        self.n_blocks = enc.index.shape[0] - 1
        self.n_planes = n_planes
        self.args = (enc.data, enc.index, layout_of(enc.dtype, itemsize), itemsize, enc.numel, self.block_size, n_planes)

    def decode(self, lo: int, hi: int, words: np.ndarray, threads: int = 1) -> None:
        """Decode blocks ``[lo, hi)`` into ``words`` (block ``lo`` at element 0), on up to ``threads``
        threads. ``words``: the uint16 (half floats), uint32 (float32) or uint8 (other dtypes) view
        of the output. Raises CorruptStreamError on a block that does not decode."""
        errs = np.zeros((2, max(hi - lo, 1)), np.int64)  # error code, plane
        if threads <= 1 or hi - lo < 2:
            failed = decode_span(*self.args, lo, lo, hi, words, errs[0], errs[1], *_one_thread(self.n_planes, self.block_size))
        else:
            with kernel_threads(threads) as count, parallel_chunksize(1):
                failed = decode_span_parallel(*self.args, lo, hi, words, errs[0], errs[1], UNIT,
                                              *thread_scratch(count, self.n_planes, self.block_size))
        if failed == ERR_ARGS:
            raise ValueError(f"blocks [{lo}, {hi}) of {self.n_blocks} do not fit the buffer of {words.shape[0]} "
                             f"words{where(self.name)}")
        if failed:
            j = int(np.flatnonzero(errs[0])[0])
            raise corrupt_block(self.name, lo + j, int(errs[1, j]), ERROR_TEXT.get(int(errs[0, j]), "invalid data"))


_ONE = threading.local()


def _one_thread(n_planes: int, block_size: int) -> tuple[np.ndarray, ...]:
    """This Python thread's single-thread decode scratch (``thread_scratch(1, ...)``, first slices)."""
    cache = _ONE.__dict__.setdefault("by_shape", {})
    got = cache.get((n_planes, block_size))
    if got is None:
        got = cache[(n_planes, block_size)] = tuple(part[0] for part in thread_scratch(1, n_planes, block_size))
    return got
