"""Decode encoded tensors on a CUDA GPU with numba-cuda kernels, straight into torch tensors.

    out = decode_cuda(enc)                          # one shot: upload, parse, decode, verify
    dev = DeviceEncodedTensor.from_encoded(enc)     # keep the encoded bytes on the GPU ...
    dev.decode(out=buf, scratch=shared_scratch)     # ... and decode them again and again

Pipeline (kernels in cuda_kernels / cuda_huffman / cuda_rans): a parse kernel walks every
block's plane sections once (``from_encoded``); per decode, a Huffman and a rANS kernel decode
the coded sections into a byte scratch buffer, then a merge kernel rebuilds the elements from
scratch, raw and const planes, writes them through ``__cuda_array_interface__`` and sums the
checksum on the device. Only a 32-byte status word comes back to the host, when checking.

``numba.cuda`` is imported on first use. Under numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1`` set before numba is imported) the same kernels run on the CPU and
every tensor here is a CPU tensor, whatever ``device`` says; that is how the tests run without
a GPU.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import numpy as np
import torch

from llmcomp_hf.codec.encoded import DTYPES, EncodedTensor
from llmcomp_hf.errors import ChecksumMismatchError, CorruptStreamError, where

_PAD = 16  # zero bytes after the data: aligned word reads never leave the allocation


def _numba_cuda() -> Any:
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
    _numba_cuda()
    from numba.cuda.core import config

    return bool(config.ENABLE_CUDASIM)


def _resolve_device(device: Any) -> torch.device:
    if simulating():
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"decode_cuda needs a CUDA device, got {dev}; use llmcomp_hf.codec.decode on CPU")
    if not torch.cuda.is_available() or not _numba_cuda().is_available():
        raise RuntimeError(
            "no usable CUDA GPU: torch.cuda.is_available() is "
            f"{torch.cuda.is_available()}, numba.cuda.is_available() is {_numba_cuda().is_available()}. "
            "Check the NVIDIA driver, or decode on CPU with llmcomp_hf.codec.decode."
        )
    return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)


def _kernel_array(t: torch.Tensor, dtype: Any) -> Any:
    """A numba device-array view of a contiguous 1-D tensor's memory, reinterpreted as ``dtype``."""
    if simulating():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(t.numpy().view(dtype))
    return _numba_cuda().as_cuda_array(t, sync=False).view(dtype)


def _upload(arr: np.ndarray, device: torch.device, pad: int = 0) -> torch.Tensor:
    """Copy a host array to ``device`` followed by ``pad`` zero bytes (no host-side copy)."""
    flat = arr.reshape(-1).view(np.uint8)
    dev = torch.empty(flat.size + pad, dtype=torch.uint8, device=device)
    if pad:
        dev[flat.size :].zero_()
    if flat.size:
        with warnings.catch_warnings():  # read-only (mmapped) arrays are only read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            dev[: flat.size].copy_(torch.from_numpy(flat))
    return dev


class DeviceEncodedTensor:
    """An encoded tensor resident on a CUDA device, parsed once, decodable many times.

    Holds the encoded ``data`` (uint8, zero-padded) and ``index`` (int64) as device tensors plus
    the per-section table the parse kernel produced, so repeated decodes neither re-upload nor
    re-parse. Decode tables are rebuilt in shared memory on every decode (a few percent of the
    work) rather than kept resident (that would cost ~4 KB per coded section).
    """

    def __init__(self, enc: EncodedTensor, device: Any = "cuda", stream: "torch.cuda.Stream | None" = None) -> None:
        from llmcomp_hf.codec import cuda_kernels as K
        from llmcomp_hf.codec.planes import layout_of

        enc.validate()
        self.header = dict(enc.header)
        self.name = enc.name
        self.device = _resolve_device(device)
        self.numel, self.shape = enc.numel, enc.shape
        self.itemsize, self.n_planes = DTYPES[enc.dtype]
        self.dtype: torch.dtype = getattr(torch, enc.dtype)
        self.kind = layout_of(enc.dtype, self.itemsize)
        self.block_size = int(self.header["block_size"])
        self.n_blocks = enc.index.shape[0] - 1
        self._verified = False
        n_units = self.n_blocks * self.n_planes
        with self._on(stream) as launch:
            self.data = _upload(enc.data, self.device, pad=_PAD + (-enc.data.size) % 8)
            self.index = _upload(enc.index, self.device).view(torch.int64)
            self.modes = torch.empty(max(n_units, 1), dtype=torch.int64, device=self.device)
            self.offs = torch.empty_like(self.modes)
            self.lens = torch.empty_like(self.modes)
            self._status = torch.zeros(4, dtype=torch.int64, device=self.device)
            self._words = _kernel_array(self.data, np.uint32)
            self._arrays = [_kernel_array(t, np.int64) for t in (self.modes, self.offs, self.lens)]
            if self.n_blocks:
                grid = -(-self.n_blocks // K.PARSE_THREADS)
                K.parse_sections[grid, K.PARSE_THREADS, launch](
                    self._words, _kernel_array(self.index, np.int64), self.numel, self.block_size,
                    self.n_planes, *self._arrays, _kernel_array(self._status, np.int64),
                )  # fmt: skip
            self.check()
            modes = self.modes.cpu().numpy()[:n_units]
            coded = modes >= K.MODE_HUFFMAN
            slots = np.where(coded, np.cumsum(coded) - 1, -1).astype(np.int64)
            self.n_coded = int(coded.sum())
            self.slots = _upload(slots if n_units else np.full(1, -1, np.int64), self.device).view(torch.int64)
            self.huffman_units = _upload(np.flatnonzero(modes == K.MODE_HUFFMAN).astype(np.int64), self.device).view(torch.int64)
            self.rans_units = _upload(np.flatnonzero(modes == K.MODE_RANS).astype(np.int64), self.device).view(torch.int64)
        self._arrays.append(_kernel_array(self.slots, np.int64))

    @classmethod
    def from_encoded(cls, enc: EncodedTensor, device: Any = "cuda", stream: "torch.cuda.Stream | None" = None) -> "DeviceEncodedTensor":
        """Upload ``enc`` to ``device`` and parse its sections (raises CorruptStreamError)."""
        return cls(enc, device, stream)

    @property
    def scratch_nbytes(self) -> int:
        """Bytes of scratch one decode needs (one block of bytes per entropy-coded section)."""
        return self.n_coded * self.block_size + 8

    @property
    def nbytes(self) -> int:
        """Device bytes held: encoded data, index and the section table."""
        return sum(t.numel() * t.element_size() for t in (self.data, self.index, self.modes, self.offs, self.lens, self.slots))

    def new_scratch(self) -> torch.Tensor:
        """A scratch buffer big enough for this tensor (share one across tensors: take the max)."""
        return torch.empty(self.scratch_nbytes, dtype=torch.uint8, device=self.device)

    @contextmanager
    def _on(self, stream: "torch.cuda.Stream | None") -> Iterator[Any]:
        """Make the tensor's device (and ``stream``) current; yield the numba stream to launch on."""
        if simulating():
            yield 0
            return
        cuda = _numba_cuda()
        with torch.cuda.device(self.device), cuda.gpus[self.device.index]:
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                yield cuda.external_stream(torch.cuda.current_stream(self.device).cuda_stream)

    def decode(
        self,
        out: torch.Tensor | None = None,
        *,
        scratch: torch.Tensor | None = None,
        verify: bool | None = None,
        stream: "torch.cuda.Stream | None" = None,
    ) -> torch.Tensor:
        """Decode into ``out`` (allocated when None) on the device; returns ``out``.

        Args:
            out: contiguous tensor of the header's dtype and shape on this device.
            scratch: uint8 device tensor of >= ``scratch_nbytes`` bytes, reusable across tensors
                decoded on the same stream; allocated per call when None.
            verify: check errors and the checksum (synchronises with the host). None: only on
                the first decode of this object; later decodes are then fully asynchronous.
            stream: torch CUDA stream to run on (default: the current stream).
        """
        from llmcomp_hf.codec import cuda_huffman as H
        from llmcomp_hf.codec import cuda_kernels as K
        from llmcomp_hf.codec import cuda_rans as R

        verify = not self._verified if verify is None else verify
        with self._on(stream) as launch:
            out = self._check_out(out)
            if out.data_ptr() % 8:  # only word-aligned outputs can take 32-bit stores
                tmp = self.decode(scratch=scratch, verify=verify, stream=stream)
                return out.copy_(tmp)
            if self.numel == 0:
                if verify and int(self.header["checksum"], 16) != 0:
                    raise ChecksumMismatchError(f"checksum mismatch{where(self.name)}: empty tensor, expected {self.header['checksum']}")
                return out
            scratch = self.new_scratch() if scratch is None else scratch
            if scratch.dtype != torch.uint8 or scratch.numel() < self.scratch_nbytes or scratch.data_ptr() % 8:
                raise ValueError(f"scratch must be an 8-byte aligned uint8 tensor of >= {self.scratch_nbytes} bytes{where(self.name)}")
            self._status.zero_()
            status = _kernel_array(self._status, np.int64)
            scr = _kernel_array(scratch.reshape(-1)[: self.scratch_nbytes // 8 * 8], np.uint64)
            modes, offs, lens, slots = self._arrays
            args = (self.n_planes, self.block_size, self.numel, scr, status)
            for kernel, units in ((H.huffman_decode, self.huffman_units), (R.rans_decode, self.rans_units)):
                if units.numel():
                    grid = -(-units.numel() // H.UNITS)
                    kernel[grid, H.THREADS, launch](self._words, _kernel_array(units, np.int64), offs, lens, slots, *args)
            body, n_full, tail = self._out_views(out)
            n_words = -(-self.numel * self.itemsize // 4)
            grid = min(-(-n_words // K.MERGE_THREADS), self._max_merge_blocks())
            K.merge_planes[grid, K.MERGE_THREADS, launch](
                self._words, modes, offs, slots, scr, self.kind, self.itemsize, self.n_planes,
                self.block_size, self.numel, body, n_full, tail, _kernel_array(self._status[1:2], np.uint64),
                int(verify),
            )  # fmt: skip
            if verify:
                self.check(checksum=True)
                self._verified = True
        return out

    def check(self, checksum: bool = False) -> None:
        """Synchronise and raise CorruptStreamError for errors the kernels flagged since the last
        decode started (and ChecksumMismatchError when ``checksum`` and the sums differ)."""
        from llmcomp_hf.codec.cuda_kernels import ERROR_TEXT, UNIT_LIMIT

        key, total = (int(v) for v in self._status[:2].cpu().tolist())
        if key:
            unit = UNIT_LIMIT - (key >> 4)
            block, plane = divmod(unit, self.n_planes)
            raise CorruptStreamError(
                f"corrupted encoded stream{where(self.name)}: block {block}, plane {plane}: "
                f"{ERROR_TEXT.get(key & 15, 'invalid data')} (CUDA decoder). The file is damaged or "
                "truncated: re-download or re-compress it."
            )
        if checksum:
            got = f"{total & (2**64 - 1):016x}"
            if got != self.header["checksum"].lower():
                raise ChecksumMismatchError(
                    f"checksum mismatch{where(self.name)}: decoded {got}, expected {self.header['checksum']} "
                    "(CUDA decoder). The encoded data is corrupted: re-download or re-compress it."
                )

    def _check_out(self, out: torch.Tensor | None) -> torch.Tensor:
        if out is None:
            return torch.empty(self.shape, dtype=self.dtype, device=self.device)
        if out.dtype != self.dtype or tuple(out.shape) != tuple(self.shape) or out.device != self.device or not out.is_contiguous():
            raise ValueError(
                f"out must be a contiguous {self.dtype} tensor of shape {list(self.shape)} on {self.device}"
                f"{where(self.name)}, got {out.dtype} {list(out.shape)} on {out.device}"
            )
        return out

    def _out_views(self, out: torch.Tensor) -> tuple[Any, int, Any]:
        """(uint32 view of the word-aligned body, its length, uint8 view of the 0..3 tail bytes)."""
        u8 = out.reshape(-1).view(torch.uint8)
        n_full = u8.numel() // 4
        body = u8[: n_full * 4] if n_full else self._status.view(torch.uint8)[24:28]  # dummy word
        tail = u8[n_full * 4 :] if u8.numel() % 4 else self._status.view(torch.uint8)[28:29]  # dummy
        return _kernel_array(body, np.uint32), n_full, _kernel_array(tail, np.uint8)

    def _max_merge_blocks(self) -> int:
        if simulating():
            return 2
        return 8 * torch.cuda.get_device_properties(self.device).multi_processor_count


def decode_cuda(
    enc: EncodedTensor,
    out: torch.Tensor | None = None,
    device: Any = "cuda",
    verify: bool = True,
    stream: "torch.cuda.Stream | None" = None,
) -> torch.Tensor:
    """Decode ``enc`` on a CUDA device into ``out`` (allocated there when None).

    Uploads the encoded arrays once, decodes on the device and checks the error flags (and, when
    ``verify``, the checksum) before returning. Raises CorruptStreamError / ChecksumMismatchError
    naming the tensor, ImportError without numba-cuda, RuntimeError without a usable GPU.
    """
    dev = DeviceEncodedTensor(enc, out.device if out is not None else device, stream)
    result = dev.decode(out, verify=verify, stream=stream)
    if not verify:
        dev.check()
    return result


__all__ = ["DeviceEncodedTensor", "decode_cuda", "simulating"]
