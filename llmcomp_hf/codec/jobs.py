"""Decode a list of encoded tensors in one kernel call, sharing the list with other threads.

A loader that decodes in the background (``llmcomp_hf._prefetch``) must not take the GIL per
tensor: while the main thread runs Python, every return from a kernel waits for the GIL (up to
the interpreter's 5 ms switch interval), which tripled the decode time of a MiniLM load. So the
tensors are described up front in flat arrays and decoded by ``decode_jobs`` without the GIL.
Each job's ``state`` moves PENDING -> RUNNING -> DONE or FAILED by atomic operations (see
``atomics``), so several threads may walk the same list (the background one forwards, a waiting
one backwards) and no job is decoded twice; another thread may also CLAIM a pending job for
itself. Jobs name their data and output by address (numba has no cheap way to take a list of
arrays from Python) and their index by its span in one int64 array. The index is validated in the kernel exactly as ``EncodedTensor.validate`` does; a job that fails
anything is marked FAILED, and its owner decodes it the ordinary way to report the error.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from llmcomp_hf.codec.atomics import compare_exchange, load_acquire, store_release
from llmcomp_hf.codec.blocks import decode_block
from llmcomp_hf.codec.checksum import sum32_range
from llmcomp_hf.codec.encoded import DTYPES, EncodedTensor, _index_fault, forbidden
from llmcomp_hf.codec.planes import KIND_F32, KIND_HALF, layout_of, merge_block

PENDING, RUNNING, DONE, FAILED, CLAIMED = 0, 1, 2, 3, 4

# Columns of the int64 job table. DATA and OUT are addresses: the caller keeps the memory alive
# (the mapped file, the output tensor) while any kernel may run the job.
DATA, DATA_LEN, INDEX_LO, INDEX_HI, KIND, ITEMSIZE, NUMEL, BLOCK, PLANES, V1, OUT, NBYTES = range(12)
COLUMNS = 12


def job_row(enc: EncodedTensor, index_at: int) -> list[int]:
    """The table row of ``enc`` (its data read in place, so keep ``enc.data`` alive), with its
    index at ``indexes[index_at:]``; ``OUT`` is 0 until the caller sets its output's address.

    The header and array types are validated here (FormatError), the index by the kernel itself.
    """
    enc.validate(check_index=False)
    itemsize, n_planes = DTYPES[enc.dtype]
    row = [0] * COLUMNS
    row[DATA], row[DATA_LEN] = enc.data.ctypes.data, enc.data.shape[0]
    row[INDEX_LO], row[INDEX_HI] = index_at, index_at + enc.index.shape[0]
    row[KIND], row[ITEMSIZE], row[NUMEL] = layout_of(enc.dtype, itemsize), itemsize, enc.numel
    row[BLOCK], row[PLANES] = enc.header["block_size"], n_planes
    row[V1] = forbidden(enc.header)  # bit m: a mode-m context section is corrupt in this stream
    row[NBYTES] = enc.numel * itemsize
    return row


@intrinsic
def _bytes_at(typingctx, addr):
    """The address ``addr`` (int64) as a uint8 pointer, for ``numba.carray``."""
    if not isinstance(addr, types.Integer):
        return None
    sig = types.CPointer(types.uint8)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return sig, codegen


@njit(cache=True, nogil=True)
def _decode_one(data, index, kind, itemsize, numel, block_size, n_planes, v1, words, u8, u32,
                planes, src, single, multi, memo, slots, memo4):
    """(ok, checksum) of one tensor decoded into ``words``; the index is checked first."""
    if _index_fault(index, data.shape[0], 2 * n_planes, data, v1) != 0:
        return False, np.uint64(0)
    if index.shape[0] - 1 != (numel + block_size - 1) // block_size:
        return False, np.uint64(0)
    acc = np.uint64(0)
    for b in range(index.shape[0] - 1):
        start = b * block_size
        n = min(block_size, numel - start)
        err, _ = decode_block(data, index, b, block_size, n, kind, n_planes, planes, src, single, multi, memo, slots, memo4)
        if err < 0:
            for p in range(n_planes):
                memo[p, 0] = 0
            memo4[0] = 0
            memo4[1] = 0
            return False, np.uint64(0)
        merge_block(planes, src, data, kind, itemsize, start, n, words)
        acc += sum32_range(u8, u32, start * itemsize, (start + n) * itemsize)
    return True, acc


@njit(cache=True, nogil=True)
def decode_jobs(table, indexes, state, csums, first, stop, step, watch, max_bytes,
                planes, src, single, multi, memo, slots, memo4):
    """Decode the PENDING jobs ``first, first + step, ...`` (before ``stop``) that have an output and
    are at most ``max_bytes`` decoded; return early once job ``watch`` (if >= 0) is DONE or FAILED.

    ``table``: int64 [jobs, COLUMNS], ``OUT`` set before a job may run; ``indexes``: int64, the
    jobs' block indexes side by side; ``csums``: uint64 checksums of DONE jobs. Scratch as in
    blocks.decode_scratch (one thread's, for the jobs' plane count and block size).
    """
    j = first
    while j != stop:
        if watch >= 0:
            seen = load_acquire(state, watch)
            if seen == DONE or seen == FAILED:
                return
        row = table[j]
        ready = row[OUT] != 0 or row[NBYTES] == 0  # never a job without its output
        if ready and row[NBYTES] <= max_bytes and compare_exchange(state, j, PENDING, RUNNING) == PENDING:
            data = numba.carray(_bytes_at(row[DATA]), row[DATA_LEN])
            index = indexes[row[INDEX_LO] : row[INDEX_HI]]
            u8 = numba.carray(_bytes_at(row[OUT]), row[NBYTES])
            u32 = u8[: (u8.shape[0] // 4) * 4].view(np.uint32)
            kind, size, numel, bs, n_planes, v1 = row[KIND], row[ITEMSIZE], row[NUMEL], row[BLOCK], row[PLANES], row[V1]
            if kind == KIND_HALF:
                ok, acc = _decode_one(data, index, kind, size, numel, bs, n_planes, v1, u8.view(np.uint16), u8, u32,
                                      planes, src, single, multi, memo, slots, memo4)
            elif kind == KIND_F32:
                ok, acc = _decode_one(data, index, kind, size, numel, bs, n_planes, v1, u8.view(np.uint32), u8, u32,
                                      planes, src, single, multi, memo, slots, memo4)
            else:
                ok, acc = _decode_one(data, index, kind, size, numel, bs, n_planes, v1, u8, u8, u32,
                                      planes, src, single, multi, memo, slots, memo4)
            csums[j] = acc
            store_release(state, j, DONE if ok else FAILED)
        j += step


__all__ = ["CLAIMED", "COLUMNS", "DONE", "FAILED", "PENDING", "RUNNING", "decode_jobs", "job_row"]
