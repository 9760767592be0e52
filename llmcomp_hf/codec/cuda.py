"""Decode encoded tensors on a CUDA GPU with numba-cuda kernels, straight into torch tensors.

    out = decode_cuda(enc)                          # one shot: upload, parse, decode, verify
    dev = DeviceEncodedTensor.from_encoded(enc)     # keep the encoded bytes on the GPU ...
    dev.decode(out=buf, scratch=shared_scratch)     # ... and decode them again and again

Pipeline (kernels in cuda_kernels / cuda_huffman / cuda_rans / cuda_merge): a parse kernel walks every
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

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import numpy as np
import torch

from llmcomp_hf.codec.cuda_runtime import PAD, kernel_array, numba_cuda, resolve_device, upload, simulating
from llmcomp_hf.codec.encoded import DTYPES, EncodedTensor, checksum_of, load_json_object, context_allowed
from llmcomp_hf.errors import ChecksumMismatchError, FormatError, checksum_mismatch, corrupt_block, where


class DeviceEncodedTensor:
    """An encoded tensor resident on a CUDA device, parsed once, decodable many times.

    Holds the encoded ``data`` (uint8, zero-padded) and ``index`` (int64) as device tensors plus
    the per-section table the parse kernel produced, so repeated decodes neither re-upload nor
    re-parse. Decode tables are rebuilt in shared memory on every decode (a few percent of the
    work) rather than kept resident (that would cost ~4 KB per coded section).
    """

    def __init__(
        self,
        enc: EncodedTensor,
        device: Any = "cuda",
        stream: "torch.cuda.Stream | None" = None,
        *,
        data: torch.Tensor | None = None,
    ) -> None:
        """Upload and parse ``enc``; ``data``, when given, replaces ``enc.data`` as the source of
        the encoded bytes (a tensor already on the device: copied device to device)."""
        from llmcomp_hf.codec import cuda_kernels as K
        from llmcomp_hf.codec.planes import layout_of

        enc.validate()
        if context_allowed(enc.header):
            raise FormatError(
                f"the CUDA decoder has no decoder for context sections (modes 4, 5){where(enc.name)}: this tensor is "
                f"version {enc.header['version']}, coder {enc.header['coder']!r} (rANS with context); decode on the CPU "
                "(llmcomp_hf.codec.decode) or re-compress with coder='huffman' or 'rans'"
            )
        self.header = dict(enc.header)
        self.name = enc.name
        self.device = resolve_device(device)
        self.numel, self.shape = enc.numel, enc.shape
        self.itemsize, self.n_planes = DTYPES[enc.dtype]
        self.dtype: torch.dtype = getattr(torch, enc.dtype)
        self.kind = layout_of(enc.dtype, self.itemsize)
        self.block_size = int(self.header["block_size"])
        self.n_blocks = enc.index.shape[0] - 1
        bs = self.block_size
        self._bs_log2 = bs.bit_length() - 1 if bs & (bs - 1) == 0 else -1  # shifts instead of divisions
        self._verified = False
        n_units = self.n_blocks * self.n_planes
        with self._on(stream) as launch:
            src = enc.data if data is None else data
            self.data = upload(src, self.device, pad=PAD + (-enc.data.shape[0]) % 8)
            self.index = upload(enc.index, self.device).view(torch.int64)
            self.modes = torch.empty(max(n_units, 1), dtype=torch.int64, device=self.device)
            self.offs = torch.empty_like(self.modes)
            self.lens = torch.empty_like(self.modes)
            self._status = torch.zeros(4, dtype=torch.int64, device=self.device)
            self._words = kernel_array(self.data, np.uint32)
            self._arrays = [kernel_array(t, np.int64) for t in (self.modes, self.offs, self.lens)]
            if self.n_blocks:
                grid = -(-self.n_blocks // K.PARSE_THREADS)
                K.parse_sections[grid, K.PARSE_THREADS, launch](
                    self._words, kernel_array(self.index, np.int64), self.numel, self.block_size,
                    self.n_planes, *self._arrays, kernel_array(self._status, np.int64),
                )  # fmt: skip
            self.check()
            modes = self.modes.cpu().numpy()[:n_units]
            coded = modes >= K.MODE_HUFFMAN
            slots = np.where(coded, np.cumsum(coded) - 1, -1).astype(np.int64)
            self.n_coded = int(coded.sum())
            self.slots = upload(slots if n_units else np.full(1, -1, np.int64), self.device).view(torch.int64)
            units = [np.flatnonzero(modes == m).astype(np.int64) for m in (K.MODE_HUFFMAN, K.MODE_RANS)]
            self.n_huffman, self.n_rans = (len(u) for u in units)
            # -1 padded to >= 1 entry (kernels skip negative units; no zero-size device arrays)
            self.huffman_units, self.rans_units = (
                upload(np.append(u, -1), self.device).view(torch.int64) for u in units
            )
        self._arrays.append(kernel_array(self.slots, np.int64))
        # device views reused by every decode (each conversion costs a few microseconds)
        self._k_status = kernel_array(self._status, np.int64)
        self._k_csum = kernel_array(self._status[1:2], np.uint64)
        self._k_units = [kernel_array(t, np.int64) for t in (self.huffman_units, self.rans_units)]
        self._k_dummy_word = kernel_array(self._status.view(torch.uint8)[24:28], np.uint32)
        self._k_dummy_byte = kernel_array(self._status.view(torch.uint8)[28:29], np.uint8)

    @classmethod
    def from_encoded(
        cls, enc: EncodedTensor, device: Any = "cuda", stream: "torch.cuda.Stream | None" = None
    ) -> "DeviceEncodedTensor":
        """Upload ``enc`` to ``device`` and parse its sections (raises CorruptStreamError)."""
        return cls(enc, device, stream)

    @classmethod
    def from_parts(
        cls,
        header: "dict[str, Any] | str",
        data: torch.Tensor,
        index: Any,
        name: str | None = None,
        stream: "torch.cuda.Stream | None" = None,
    ) -> "DeviceEncodedTensor":
        """Build from arrays that may already live on the GPU (e.g. a module's buffers): the data
        bytes are copied device to device into a padded buffer, only the small index visits the
        host (for validation). Decodes on ``data``'s device (CUDA) or the current one."""
        idx = index.detach().cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        if idx.dtype != np.int64 or data.dtype != torch.uint8:
            raise FormatError(f"data must be uint8 and index int64{where(name)}, got {data.dtype} and {idx.dtype}")
        hdr = load_json_object(header, "encoded-tensor header", where(name)) if isinstance(header, str) else dict(header)
        placeholder = np.broadcast_to(np.zeros(1, np.uint8), (int(data.numel()),))  # validate() needs the length only
        enc = EncodedTensor(hdr, placeholder, np.ascontiguousarray(idx.reshape(-1)), name)
        device = data.device if data.device.type == "cuda" else "cuda"
        return cls(enc, device, stream, data=data)

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
        cuda = numba_cuda()
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
        from llmcomp_hf.codec import cuda_merge as M
        from llmcomp_hf.codec import cuda_rans as R

        verify = not self._verified if verify is None else verify
        with self._on(stream) as launch:
            out = self._check_out(out)
            if out.data_ptr() % 8:  # only word-aligned outputs can take 32-bit stores
                tmp = self.decode(scratch=scratch, verify=verify, stream=stream)
                return out.copy_(tmp)
            if self.numel == 0:
                if verify and checksum_of(self.header, 0) != self.header["checksum"].lower():
                    raise ChecksumMismatchError(
                        f"checksum mismatch{where(self.name)}: empty tensor, expected {self.header['checksum']}"
                    )
                return out
            scratch = self.new_scratch() if scratch is None else scratch
            if scratch.dtype != torch.uint8 or scratch.numel() < self.scratch_nbytes or scratch.data_ptr() % 8:
                raise ValueError(
                    f"scratch must be an 8-byte aligned uint8 tensor of >= {self.scratch_nbytes} bytes{where(self.name)}"
                )
            self._status.zero_()
            scr = kernel_array(scratch.reshape(-1)[: self.scratch_nbytes // 8 * 8], np.uint64)
            modes, offs, lens, slots = self._arrays
            args = (self.n_planes, self.block_size, self.numel, scr, self._k_status)
            for kernel, count, k_units in (
                (H.huffman_decode, self.n_huffman, self._k_units[0]),
                (R.rans_decode, self.n_rans, self._k_units[1]),
            ):
                if count:
                    kernel[-(-count // H.UNITS), H.THREADS, launch](self._words, k_units, offs, lens, slots, *args)
            body, n_full, tail = self._out_views(out)
            n_oct = -(-self.numel // 8)
            grid = min(-(-n_oct // M.MERGE_THREADS), self._max_merge_blocks())
            M.merge_planes[grid, M.MERGE_THREADS, launch](
                self._words, modes, offs, slots, scr, self.kind, self.itemsize, self.n_planes, self.block_size,
                self._bs_log2, self.numel, body, n_full, tail, self._k_csum, int(verify),
            )  # fmt: skip
            if verify:
                self.check(checksum=True, stream=stream)
                self._verified = True
        return out

    def check(self, checksum: bool = False, stream: "torch.cuda.Stream | None" = None) -> None:
        """Wait for ``stream`` (default: current) and raise CorruptStreamError for errors the kernels
        flagged since the last decode started (ChecksumMismatchError: ``checksum`` and sums differ,
        which needs that decode to have run with ``verify=True``)."""
        from llmcomp_hf.codec.cuda_kernels import ERROR_TEXT, UNIT_LIMIT

        with self._on(stream):
            key, total = (int(v) for v in self._status[:2].cpu().tolist())
        if key:
            unit = UNIT_LIMIT - (key >> 4)
            block, plane = divmod(unit, self.n_planes)
            raise corrupt_block(self.name, block, plane, ERROR_TEXT.get(key & 15, "invalid data"), " (CUDA decoder)")
        if checksum:
            got = checksum_of(self.header, total & (2**64 - 1))
            if got != self.header["checksum"].lower():
                raise checksum_mismatch(self.name, got, self.header["checksum"], " (CUDA decoder)")

    def _check_out(self, out: torch.Tensor | None) -> torch.Tensor:
        if out is None:
            return torch.empty(self.shape, dtype=self.dtype, device=self.device)
        same = out.dtype == self.dtype and tuple(out.shape) == tuple(self.shape) and out.device == self.device
        if not same or not out.is_contiguous():
            raise ValueError(
                f"out must be a contiguous {self.dtype} tensor of shape {list(self.shape)} on {self.device}"
                f"{where(self.name)}, got {out.dtype} {list(out.shape)} on {out.device}"
            )
        return out

    def _out_views(self, out: torch.Tensor) -> tuple[Any, int, Any]:
        """(uint32 view of the word-aligned body, its length, uint8 view of the 0..3 tail bytes)."""
        u8 = out.reshape(-1).view(torch.uint8)
        n_full = u8.numel() // 4
        body = kernel_array(u8[: n_full * 4], np.uint32) if n_full else self._k_dummy_word
        tail = kernel_array(u8[n_full * 4 :], np.uint8) if u8.numel() % 4 else self._k_dummy_byte
        return body, n_full, tail

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
