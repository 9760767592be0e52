"""Output buffers for decoding: ordinary torch tensors, optionally backed by huge pages.

A decoded weight is written into fresh memory, and on Linux every fresh 4 KiB page costs a page
fault and a zeroing: measured on this project's 2-core VM, touching 90 MB of new pages took 43 ms
(as long as decoding them) and 9 ms once the region was advised for transparent huge pages
(``MADV_HUGEPAGE``; distributions enable THP in "madvise" mode, where nothing gets huge pages
without the advice). But there the first loads of a process were 2.5x slower with the advice
(the host backs fresh huge pages lazily), so it is opt-in: ``LLMCOMP_HUGE_PAGES=1``. The advice
covers the 2 MiB-aligned interior of the tensor's own memory and changes nothing else; where it
is unavailable (another OS, THP off, no libc) the tensor is simply used as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Any

import torch

HUGE_PAGE = 2 << 20
ADVISE_MIN_BYTES = 4 << 20  # below this the interior holds at most one huge page
_MADV_HUGEPAGE = 14


@functools.lru_cache(maxsize=1)
def _madvise() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def advise_huge_pages(tensor: torch.Tensor) -> bool:
    """Ask for transparent huge pages under the CPU tensor's memory; True if the OS took the advice."""
    nbytes = tensor.numel() * tensor.element_size()
    madvise = _madvise() if nbytes >= ADVISE_MIN_BYTES and tensor.device.type == "cpu" else None
    if madvise is None:
        return False
    start = tensor.data_ptr()
    lo = -(-start // HUGE_PAGE) * HUGE_PAGE
    hi = (start + nbytes) // HUGE_PAGE * HUGE_PAGE
    return hi > lo and madvise(lo, hi - lo, _MADV_HUGEPAGE) == 0


def huge_pages_wanted() -> bool:
    """Whether decode outputs get the huge-page advice (``LLMCOMP_HUGE_PAGES=1``)."""
    return os.environ.get("LLMCOMP_HUGE_PAGES", "0") == "1"


def empty(shape: Any, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype)`` on the CPU; advised for huge pages when large and wanted.

    The device is explicit: transformers builds models under ``torch.device("meta")``, where a
    plain ``torch.empty`` would give a tensor without memory.
    """
    out = torch.empty(shape, dtype=dtype, device="cpu")
    if huge_pages_wanted():
        advise_huge_pages(out)
    return out


__all__ = ["advise_huge_pages", "empty", "huge_pages_wanted"]
