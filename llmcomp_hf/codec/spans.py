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
from concurrent.futures import FIRST_COMPLETED, wait

import numpy as np
from numba import njit

from llmcomp_hf.codec import huffman, rans_ctx, rans_scale
from llmcomp_hf.codec.api import thread_scratch
from llmcomp_hf.codec.pool import pool as thread_pool
from llmcomp_hf.codec.atomics import compare_exchange, load_acquire, store_release
from llmcomp_hf.codec.blocks import ERROR_TEXT, SLOTS_SCALE, decode_block
from llmcomp_hf.codec.encoded import DTYPES, EncodedTensor
from llmcomp_hf.codec.planes import KIND_BYTES, layout_of, merge_block
from llmcomp_hf.errors import corrupt_block, where

ERR_ARGS = -6  # a range or buffer that does not fit (the caller's bug, not the stream's)
FREE, TAKEN, DONE = 0, 1, 2  # states of a block in decode_claiming


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
    if slots.shape[0] < SLOTS_SCALE + rans_scale.SLOTS or memo4.shape[0] < rans_ctx.MEMO_BYTES + rans_scale.MEMO_BYTES:
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
        err, plane = decode_block(data, index, b, block_size, n, kind, n_planes, planes, src, single, multi, memo, slots,
                                  memo4)
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


@njit(cache=True, nogil=True)
def decode_claiming(data, index, kind, itemsize, numel, block_size, n_planes, lo, hi, words, errs, err_plane, state,
                    start, planes, src, single, multi, memo, slots, memo4) -> int:
    """Decode the blocks of ``[lo, hi)`` no other thread has claimed, from block ``lo + start`` on (wrapping).

    ``state[b - lo]``: FREE, TAKEN (claimed by compare-and-swap) or DONE (stored with release order
    once the block and its error entries are written). Several threads run this on one span, each
    from another ``start``, so each takes a run of consecutive blocks (one table build per run) and
    none waits for another: a thread whose core is busy elsewhere just claims fewer blocks. Output
    and errors as ``decode_span`` with ``first = lo``; returns its failure count or ``ERR_ARGS``.
    """
    n = hi - lo
    if state.shape[0] < n or span_fault(index, kind, itemsize, numel, block_size, n_planes, lo, lo, hi, words, errs,
                                        err_plane, planes, src, single, multi, memo, slots, memo4):
        return ERR_ARGS
    failed = 0
    for i in range(n):
        j = (start + i) % n
        if compare_exchange(state, j, FREE, TAKEN) == FREE:
            failed += decode_span(data, index, kind, itemsize, numel, block_size, n_planes, lo, lo + j, lo + j + 1, words,
                                  errs, err_plane, planes, src, single, multi, memo, slots, memo4)
            store_release(state, j, DONE)
    return failed


@njit(cache=True, nogil=True)
def all_done(state) -> bool:
    """Whether every block of a span is DONE (acquire order: their output is then visible)."""
    for j in range(state.shape[0]):
        if load_acquire(state, j) != DONE:
            return False
    return True


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

    def _claim(self, lo: int, hi: int, words: np.ndarray, errs: np.ndarray, state: np.ndarray, start: int) -> int:
        return decode_claiming(*self.args, lo, hi, words, errs[0], errs[1], state, start,
                               *_one_thread(self.n_planes, self.block_size))

    def decode(self, lo: int, hi: int, words: np.ndarray, threads: int = 1) -> None:
        """Decode blocks ``[lo, hi)`` into ``words`` (block ``lo`` at element 0), on up to ``threads``
        threads (the caller's and pooled ones, which join as soon as they are free; the caller
        never waits for one that has not started). ``words``: the uint16 (half floats), uint32
        (float32) or uint8 (other dtypes) view of the output. Raises CorruptStreamError on a block
        that does not decode.

        Measured on this project's 2-core VM shared with other work (load ~2.6), 500 blocks in runs
        of 16: 1 thread 19.5 ms, 2 threads claiming blocks 23.5 ms, numba's parallel loop 128 ms
        (a parallel region waits for a thread whose core is busy elsewhere, at every run).
        """
        errs = np.zeros((2, max(hi - lo, 1)), np.int64)  # error code, plane
        n = hi - lo
        if threads <= 1 or n < 2:
            failed = decode_span(*self.args, lo, lo, hi, words, errs[0], errs[1], *_one_thread(self.n_planes, self.block_size))
        else:  # the caller and pooled threads claim blocks (decode_claiming), each from its own start
            helpers = min(threads, n) - 1
            state = np.zeros(n, np.int64)
            pool = thread_pool(helpers)
            futures = [pool.submit(self._claim, lo, hi, words, errs, state, (h + 1) * n // (helpers + 1)) for h in range(helpers)]
            failed = self._claim(lo, hi, words, errs, state, 0)
            while failed != ERR_ARGS and not all_done(state):  # a helper is still on a block it took
                pending = [f for f in futures if not f.done()]
                if not pending:  # every helper stopped, one of them on a claimed block: its exception
                    for f in futures:
                        f.result()
                    raise RuntimeError(f"a decode thread stopped without finishing its blocks{where(self.name)}")
                wait(pending, return_when=FIRST_COMPLETED)
            if failed != ERR_ARGS:
                failed = int(np.count_nonzero(errs[0]))
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
