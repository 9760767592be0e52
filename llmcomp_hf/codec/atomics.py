"""Atomic operations on int64 array elements for numba kernels that share work with other threads.

numba has no CPU atomics; these intrinsics emit LLVM's ``cmpxchg`` and acquire/release loads and
stores, so a kernel running without the GIL and Python code (through the small ``njit`` wrappers)
can hand work items to each other through a plain int64 array, on any CPU architecture.
No bounds checks: callers index within the array.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


def _is_i64_vector(arr: types.Type) -> bool:
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C" and arr.dtype == types.int64


def _element_pointer(context, builder, arr_type, arr, idx):
    ary = context.make_array(arr_type)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, arr_type, ary, [idx], wraparound=False)


@intrinsic
def _cas(typingctx, arr, idx, expected, new):
    """``arr[idx] = new`` if it holds ``expected`` (sequentially consistent); returns the old value."""
    if not _is_i64_vector(arr):
        return None
    sig = types.int64(arr, types.intp, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        pair = builder.cmpxchg(ptr, args[2], args[3], "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)

    return sig, codegen


@intrinsic
def _load_acquire(typingctx, arr, idx):
    if not _is_i64_vector(arr):
        return None
    sig = types.int64(arr, types.intp)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@intrinsic
def _store_release(typingctx, arr, idx, value):
    if not _is_i64_vector(arr):
        return None
    sig = types.void(arr, types.intp, types.int64)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store_atomic(args[2], ptr, "release", 8)

    return sig, codegen


@njit(cache=True)  # no nogil: Python callers keep the GIL (re-taking it can wait a switch interval)
def compare_exchange(arr: np.ndarray, idx: int, expected: int, new: int) -> int:
    """Atomically set ``arr[idx]`` to ``new`` if it is ``expected``; return the value it had."""
    return _cas(arr, idx, expected, new)


@njit(cache=True)
def load_acquire(arr: np.ndarray, idx: int) -> int:
    """``arr[idx]``, ordered before every later read of this thread (pairs with store_release)."""
    return _load_acquire(arr, idx)


@njit(cache=True)
def store_release(arr: np.ndarray, idx: int, value: int) -> None:
    """``arr[idx] = value`` after every earlier write of this thread is visible to other threads."""
    _store_release(arr, idx, value)


__all__ = ["compare_exchange", "load_acquire", "store_release"]
