"""Runtime glue between torch and numba-cuda: lazy import, simulator detection, device views.

Nothing here imports ``numba.cuda`` at module import time.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

PAD = 16  # zero bytes after the data: aligned word reads never leave the allocation


def numba_cuda() -> Any:
    """``numba.cuda``, or an ImportError that says what to install."""
    try:
        from numba import cuda
    except ImportError as exc:  # numba >= 0.61 ships the CUDA target separately
        raise ImportError(
            "GPU decoding needs numba-cuda: pip install 'llmcomp-hf[cuda]' (or numba-cuda)"
        ) from exc
    return cuda


def simulating() -> bool:
    """True when numba runs CUDA kernels in its simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    numba_cuda()
    try:
        from numba.cuda.core import config
    except ImportError:  # older numba-cuda / numba's built-in CUDA target
        from numba.core import config
    return bool(config.ENABLE_CUDASIM)


def resolve_device(device: Any) -> torch.device:
    if simulating():
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"decode_cuda needs a CUDA device, got {dev}; use llmcomp_hf.codec.decode on CPU")
    if not torch.cuda.is_available() or not numba_cuda().is_available():
        raise RuntimeError(
            "no usable CUDA GPU: torch.cuda.is_available() is "
            f"{torch.cuda.is_available()}, numba.cuda.is_available() is {numba_cuda().is_available()}. "
            "Check the NVIDIA driver, or decode on CPU with llmcomp_hf.codec.decode."
        )
    return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)


def kernel_array(t: torch.Tensor, dtype: Any) -> Any:
    """A numba device-array view of a contiguous 1-D tensor's memory, reinterpreted as ``dtype``."""
    if simulating():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(t.numpy().view(dtype))
    return numba_cuda().as_cuda_array(t, sync=False).view(dtype)


def upload(arr: "np.ndarray | torch.Tensor", device: torch.device, pad: int = 0) -> torch.Tensor:
    """Copy an array's bytes (numpy, or a torch tensor on any device) to a new uint8 tensor on
    ``device``, followed by ``pad`` zero bytes; no host-side copy."""
    if isinstance(arr, torch.Tensor):
        src = arr.detach().contiguous().reshape(-1).view(torch.uint8)
    else:
        with warnings.catch_warnings():  # read-only (mmapped) arrays are only read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            src = torch.from_numpy(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
    n = src.numel()
    dev = torch.empty(n + pad, dtype=torch.uint8, device=device)
    if pad:
        dev[n:].zero_()
    if n:
        dev[:n].copy_(src)
    return dev
