"""Public encode/decode of one tensor (torch or numpy) to and from an EncodedTensor."""

from __future__ import annotations

import functools
import math
import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch

from llmcomp_hf.codec.encoded import DTYPES, FORMAT_NAME, MAX_BLOCK, MIN_BLOCK, EncodedTensor, checksum_of, format_version
import llmcomp_hf.codec.memory as memory
from llmcomp_hf.codec.pool import run_parallel, thread_count
from llmcomp_hf.codec._jit_cache import ensure_consistent
from llmcomp_hf.codec.blocks import GROUP
from llmcomp_hf.coders import CODERS, coder as coder_entry
from llmcomp_hf.codec.planes import KIND_F32, KIND_HALF, layout_of
from llmcomp_hf.errors import CorruptStreamError, FormatError, checksum_mismatch, corrupt_block, where

DEFAULT_BLOCK_SIZE = 1 << 16
#: Default bound on the bytes one decode call allocates for its outputs (docs/format.md, "Limits"):
#: a few bytes of const blocks can declare any size, so a damaged or hostile stream could otherwise
#: ask for all the memory before any check. 16 GiB is above any single weight of today's open models
#: (a 405B model's embedding is 4.2 GB in bf16); pass ``max_output_bytes=None`` to lift it.
MAX_OUTPUT_BYTES = 16 << 30
MANY_CHUNK_BLOCKS = 8  # decode_many's unit of work: ~0.25 ms of decoding at 64K blocks
PARALLEL_MIN_BLOCKS = 4  # decode one tensor on several threads from this many blocks (a pool wake-up ~0.1 ms)
# A plane is entropy-coded only when it saves at least this share of its raw size (per coder, from
# the registry; huffman's 3%: bf16's sign+mantissa byte saves ~0.4% and stays raw).
DEFAULT_MIN_GAIN = {name: c.min_gain for name, c in CODERS.items()}

# numba's parallel loop (decode of one tensor) must not be entered from two Python threads at once.
_KERNEL_LOCK = threading.Lock()
_SCRATCH = threading.local()  # per Python thread: decode buffers reused across calls


_TMP_KEEP_BYTES = 64 << 20  # encode staging buffers up to this size are kept per Python thread


def _encode_tmp(nbytes: int) -> np.ndarray:
    """Staging buffer for encoded blocks: reused across calls (fresh pages fault on every touch)."""
    if nbytes > _TMP_KEEP_BYTES:
        return np.empty(nbytes, np.uint8)
    buf = getattr(_SCRATCH, "encode_tmp", None)
    if buf is None or buf.size < nbytes:
        buf = np.empty(max(nbytes, 1 << 20), np.uint8)
        _SCRATCH.encode_tmp = buf
    return buf[:nbytes]


def thread_scratch(n_threads: int, n_planes: int, block_size: int) -> tuple[np.ndarray, ...]:
    """This Python thread's decode buffers for (kernel threads, planes, block size), made once."""
    from llmcomp_hf.codec.blocks import decode_scratch

    cache = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (n_threads, n_planes, block_size)
    if key not in cache:
        if len(cache) >= 8:  # bounded: a few shapes are in use at a time
            cache.clear()
        cache[key] = decode_scratch(n_threads, n_planes, block_size)
    return cache[key]


def dtype_name(dtype: Any) -> str:
    """Format name of a torch or numpy dtype (``torch.bfloat16`` -> ``"bfloat16"``)."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = np.dtype(dtype).name
    if name not in DTYPES:
        raise TypeError(f"llmcomp cannot encode dtype {name!r}; supported: {sorted(DTYPES)}")
    return name


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a format dtype name."""
    return getattr(torch, name)


def _raw_bytes(tensor: Any) -> tuple[np.ndarray, str, list[int]]:
    """Contiguous uint8 view of a tensor's bytes (no copy when already contiguous on CPU)."""
    if isinstance(tensor, torch.Tensor):
        name = dtype_name(tensor.dtype)
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        shape = list(t.shape)
        flat = t.reshape(-1)
        u8 = flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, np.uint8)
        return u8, name, shape
    arr = np.ascontiguousarray(tensor)
    name = dtype_name(arr.dtype)
    return arr.reshape(-1).view(np.uint8), name, list(arr.shape)


def _word_views(u8: np.ndarray, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """(typed element words for the plane kernels, uint32 view of the aligned prefix for checksums)."""
    words = u8.view(np.uint16) if kind == KIND_HALF else u8.view(np.uint32) if kind == KIND_F32 else u8
    return words, u8[: u8.size // 4 * 4].view(np.uint32)


def _choose_threading_layer(numba: Any) -> None:
    """Prefer numba's OpenMP layer with passive waiting, unless the user chose a layer.

    Measured on 2 cores: OpenMP decodes a 179-block tensor 1.95x faster at 2 threads, while
    ``workqueue`` was erratic (1.0-1.9x). OpenMP's default active wait keeps idle threads spinning
    after each kernel and slowed the caller when the CPUs were shared, hence
    ``OMP_WAIT_POLICY=passive`` (set only if unset, before numba loads its OpenMP runtime; torch
    bundles its own). Without OpenMP, numba falls back to ``workqueue``; calls are serialised by
    ``_KERNEL_LOCK`` either way. Takes effect only before numba starts its thread pool.
    """
    if "NUMBA_THREADING_LAYER" in os.environ or numba.config.THREADING_LAYER != "default":
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]


@contextmanager
def kernel_threads(threads: int | None) -> Iterator[int]:
    """Run a parallel kernel with ``threads`` numba threads (default: all), serialised by a lock.

    torch's intra-op thread count is restored afterwards: numba's OpenMP layer shares torch's OpenMP
    runtime and sets its thread count to all cores when it starts its pool, so a process that had
    called ``torch.set_num_threads(1)`` ran torch on 2 threads after its first parallel decode.
    """
    import numba

    with _KERNEL_LOCK:
        torch_threads = torch.get_num_threads()
        _choose_threading_layer(numba)
        previous = numba.get_num_threads()
        wanted = numba.config.NUMBA_NUM_THREADS if threads is None else threads
        count = max(1, min(int(wanted), numba.config.NUMBA_NUM_THREADS))
        numba.set_num_threads(count)
        try:
            yield count
        finally:
            numba.set_num_threads(previous)
            if torch.get_num_threads() != torch_threads:
                torch.set_num_threads(torch_threads)


def encode(
    tensor: Any,
    coder: str = "huffman",
    block_size: int = DEFAULT_BLOCK_SIZE,
    threads: int | None = None,
    name: str | None = None,
    min_gain: float | None = None,
) -> EncodedTensor:
    """Encode a torch tensor or numpy array losslessly.

    Args:
        tensor: any dtype listed in docs/format.md, any shape; copied to CPU if needed.
        coder: ``"huffman"`` (fast decode), ``"rans"`` (smaller), ``"rans-ctx"`` (rANS with exponent
            contexts, format version 2: smallest, ~20% slower decode) or ``"raw"`` (byte planes only).
        block_size: elements per independently decodable block (multiple of 64, >= 256).
        threads: numba threads (default: all available).
        name: tensor name, used in error messages only.
        min_gain: code a plane only if it saves this share of its raw size (default per coder).
    """
    ensure_consistent()
    jobs = _candidates(tensor, coder, block_size, min_gain, name)
    _stage(jobs)
    count = thread_count(threads)
    run_parallel([task for job in jobs for task in job.tasks(count)], count)
    return _smallest(jobs)


def _candidates(tensor: Any, coder: str, block_size: int, min_gain: float | None, name: str | None) -> list[_Encoding]:
    """The encodings to try: one, or for ``rans-scale`` also ``rans-ctx`` (the smaller is kept; a
    tensor mode 5 does not apply to, such as a 1-D one, gets ``rans-ctx`` alone)."""
    job = _Encoding(tensor, coder, block_size, min_gain, name)
    if coder != "rans-scale":
        return [job]
    fallback = _Encoding(tensor, "rans-ctx", block_size, min_gain, name)
    return [job, fallback] if job.scale[0] else [fallback]


def _stage(jobs: list[_Encoding]) -> None:
    """Give every job its slice of one staging buffer."""
    arena, offset = _encode_tmp(sum(job.tmp_bytes for job in jobs)), 0
    for job in jobs:
        job.tmp, offset = arena[offset : offset + job.tmp_bytes], offset + job.tmp_bytes


def _smallest(jobs: list[_Encoding]) -> EncodedTensor:
    """The smallest of the finished candidates (the first on a tie)."""
    encs = [job.finish() for job in jobs]
    return min(encs, key=lambda e: e.nbytes)


class _Encoding:
    """One tensor being encoded: checked arguments, kernel arguments, per-block sizes and checksums.

    Groups of ``GROUP`` blocks are independent units of work (a group shares Huffman tables), so
    the bytes do not depend on how groups are spread over threads; a tensor of fewer groups than
    threads splits its groups into parts (see blocks.encode_groups). ``tmp`` (``tmp_bytes``) is the
    staging buffer the caller provides.
    """

    def __init__(self, tensor: Any, coder: str, block_size: int, min_gain: float | None, name: str | None) -> None:
        from llmcomp_hf.codec.blocks import CODER_IDS, block_capacity
        from llmcomp_hf.codec.scale_blocks import NO_MAPS, scale_maps

        coder_entry(coder)  # ValueError naming the known coders
        if not (isinstance(block_size, int) and MIN_BLOCK <= block_size <= MAX_BLOCK and block_size % 64 == 0):
            raise ValueError(f"block_size must be a multiple of 64 in [{MIN_BLOCK}, {MAX_BLOCK}], got {block_size!r}")
        gain = DEFAULT_MIN_GAIN[coder] if min_gain is None else float(min_gain)
        if not 0.0 <= gain < 1.0:
            raise ValueError(f"min_gain must be in [0, 1), got {min_gain!r}")
        u8, dname, shape = _raw_bytes(tensor)
        itemsize, n_planes = DTYPES[dname]
        kind = layout_of(dname, itemsize)
        numel = math.prod(shape)
        words, u32 = _word_views(u8, kind)
        n_blocks = -(-numel // block_size)
        self.coder, self.dname, self.shape, self.block_size, self.name = coder, dname, shape, block_size, name
        self.cap = block_capacity(block_size, n_planes)
        self.tmp_bytes = n_blocks * self.cap
        self.tmp: np.ndarray | None = None
        self.n_groups = -(-n_blocks // GROUP)
        self.sizes = np.zeros(n_blocks, np.int64)
        self.csum = np.zeros(n_blocks, np.uint64)
        keep_num = int((1.0 - gain) * 1024)
        self.args = (words, kind, itemsize, numel, block_size, n_planes, CODER_IDS[coder], keep_num, u8, u32)
        self.scale = scale_maps(words, kind, shape) if coder == "rans-scale" else NO_MAPS

    def run_group(self, g: int, part: int = 0, parts: int = 1) -> None:
        """Encode part ``part`` of ``parts`` of group ``g`` single-threaded (the kernel releases the GIL)."""
        from llmcomp_hf.codec.blocks import encode_groups
        from llmcomp_hf.codec.scale_blocks import encode_groups_scale

        if self.scale[0]:
            encode_groups_scale(*self.args, g, part, parts, self.tmp, self.cap, self.sizes, self.csum, *self.scale)
        else:
            encode_groups(*self.args, g, part, parts, self.tmp, self.cap, self.sizes, self.csum)

    def tasks(self, threads: int) -> list[Callable[[], None]]:
        """Units of work for ``threads`` threads: whole groups, or parts of them when there are fewer
        groups than threads (not for the context coders, whose blocks share tables chosen over the group).

        A part of a Huffman group replays the table choices of the blocks before it (their split and
        histograms, not their coding), so parts are only as many as the threads need.
        """
        n_blocks = self.sizes.shape[0]
        parts = 1
        if not coder_entry(self.coder).context_modes and 1 <= self.n_groups < threads:
            parts = min(-(-threads // self.n_groups), GROUP, max(1, n_blocks // self.n_groups))
        return [functools.partial(self.run_group, g, part, parts) for g in range(self.n_groups) for part in range(parts)]

    def finish(self) -> EncodedTensor:
        from llmcomp_hf.codec.blocks import compact

        data, index = compact(self.tmp, self.cap, self.sizes)
        self.tmp = None
        header = {
            "format": FORMAT_NAME,
            "version": format_version(self.coder),
            "dtype": self.dname,
            "shape": self.shape,
            "coder": self.coder,
            "block_size": self.block_size,
        }
        header["checksum"] = checksum_of(header, int(self.csum.sum(dtype=np.uint64)))
        return EncodedTensor(header, data, index, self.name)


class _Decoding:
    """One tensor being decoded: validated encoding, output, kernel arguments, per-block results."""

    __slots__ = ("enc", "out", "args", "n_planes", "block_size", "n_blocks", "errs", "err_plane", "csum")

    def __init__(self, enc: EncodedTensor, out: torch.Tensor | None, validate: bool = True) -> None:
        if validate:
            enc.validate()
        dname, shape = enc.dtype, list(enc.shape)
        itemsize, n_planes = DTYPES[dname]
        tdtype = torch_dtype(dname)
        if out is None:
            out = _allocate(enc)
        elif out.dtype != tdtype or list(out.shape) != shape or out.device.type != "cpu" or not out.is_contiguous():
            raise ValueError(
                f"out must be a contiguous CPU tensor of dtype {tdtype} and shape {shape}{where(enc.name)}, "
                f"got {out.dtype} {list(out.shape)} on {out.device}"
            )
        u8 = out.reshape(-1).view(torch.uint8).numpy() if out.numel() else np.empty(0, np.uint8)
        kind = layout_of(dname, itemsize)
        words, u32 = _word_views(u8, kind)
        self.enc, self.out, self.n_planes = enc, out, n_planes
        self.block_size = enc.header["block_size"]
        self.n_blocks = enc.index.shape[0] - 1
        self.errs = np.zeros(self.n_blocks, np.int64)
        self.err_plane = np.full(self.n_blocks, -1, np.int64)
        self.csum = np.zeros(self.n_blocks, np.uint64)
        self.args = (enc.data, enc.index, kind, itemsize, enc.numel, self.block_size, n_planes, words, u8, u32)

    def run_range(self, b_lo: int, b_hi: int) -> None:
        """Decode blocks [b_lo, b_hi) on this Python thread, single-threaded (the kernel releases the GIL)."""
        from llmcomp_hf.codec.blocks import decode_range

        scratch = thread_scratch(1, self.n_planes, self.block_size)
        decode_range(*self.args, b_lo, b_hi, self.errs, self.err_plane, self.csum, *(part[0] for part in scratch))

    def run_all(self, threads: int | None) -> None:
        """Decode every block: on this thread, or with pool threads pulling ranges from one queue.

        Not numba's parallel loop: its threads wake faster (~µs against ~0.1 ms), but the loop ends
        only when every thread has run its share, so when another process holds a core a 2-thread
        decode took longer than a 1-thread one (140-490 against 580-1440 MB/s, issue 16). Here the
        calling thread decodes too and returns once every range is done, whether or not a pool
        thread woke, so 2 threads are never much slower than 1; below ``PARALLEL_MIN_BLOCKS`` blocks
        a pool wake-up costs more than it saves.
        """
        count = thread_count(threads)
        if self.n_blocks < PARALLEL_MIN_BLOCKS or count == 1:
            self.run_range(0, self.n_blocks)
            return
        step = max(1, min(MANY_CHUNK_BLOCKS, self.n_blocks // (4 * count)))  # >= 4 ranges per thread: balance
        run_parallel([functools.partial(self.run_range, lo, min(lo + step, self.n_blocks))
                       for lo in range(0, self.n_blocks, step)], count)

    def run_all_openmp(self, threads: int | None) -> None:
        """The former per-tensor path (numba's parallel loop), kept for side-by-side benchmarks."""
        from llmcomp_hf.codec.blocks import decode_blocks

        if self.n_blocks < 2 or threads == 1:
            self.run_range(0, self.n_blocks)
            return
        with kernel_threads(threads) as count:
            decode_blocks(*self.args, self.errs, self.err_plane, self.csum, count,
                          *thread_scratch(count, self.n_planes, self.block_size))

    def finish(self, verify: bool) -> torch.Tensor:
        """Raise on a corrupted block or (``verify``) a checksum mismatch; else the decoded tensor."""
        from llmcomp_hf.codec.blocks import ERROR_TEXT

        enc = self.enc
        if self.errs.any():
            b = int(np.flatnonzero(self.errs)[0])
            raise corrupt_block(enc.name, b, int(self.err_plane[b]), ERROR_TEXT.get(int(self.errs[b]), "invalid data"))
        if verify:
            got = checksum_of(enc.header, int(self.csum.sum(dtype=np.uint64)))
            if got != enc.header["checksum"].lower():
                raise checksum_mismatch(enc.name, got, enc.header["checksum"])
        return self.out


def check_output_size(encs: list[EncodedTensor], max_output_bytes: int | None) -> None:
    """Refuse (FormatError) when the validated ``encs`` declare more than ``max_output_bytes`` in all."""
    if max_output_bytes is None:
        return
    total = 0
    for enc in encs:
        total += enc.original_nbytes
        if total > max_output_bytes:
            raise FormatError(
                f"refusing to decode {total} bytes{where(enc.name)} ({enc.dtype} {list(enc.shape)} from "
                f"{enc.data.nbytes} encoded bytes): over max_output_bytes={max_output_bytes}. A damaged or "
                "hostile file can declare any size in a few bytes; if the tensor really is this large, pass "
                "max_output_bytes=None or a larger limit."
            )


def _allocate(enc: EncodedTensor) -> torch.Tensor:
    """The output tensor of ``enc``; an allocation failure is reported with the tensor's name."""
    try:
        return memory.empty(list(enc.shape), torch_dtype(enc.dtype))
    except (RuntimeError, MemoryError) as exc:
        raise FormatError(
            f"cannot allocate {enc.original_nbytes} bytes for the decoded tensor{where(enc.name)} "
            f"({enc.dtype} {list(enc.shape)}): {str(exc)[:200]}. Free memory, or check that the file is not "
            "damaged (its header declares this size)."
        ) from exc


def decode(
    enc: EncodedTensor,
    out: torch.Tensor | None = None,
    threads: int | None = None,
    verify: bool = True,
    *,
    max_output_bytes: int | None = MAX_OUTPUT_BYTES,
) -> torch.Tensor:
    """Decode an EncodedTensor to a CPU torch tensor, bit-identical to what was encoded.

    Args:
        enc: the encoded tensor (validated again here, before any kernel runs).
        out: optional preallocated contiguous CPU tensor of the right dtype and shape.
        threads: numba threads (default: all available).
        verify: compare the checksum of the decoded bytes with the header's.
        max_output_bytes: refuse, before allocating, a tensor declaring more decoded bytes than this
            (default ``MAX_OUTPUT_BYTES``, 16 GiB; None: no limit). Not applied when ``out`` is given.

    Raises:
        FormatError: a header or index that breaks the format, or an output over ``max_output_bytes``.
        CorruptStreamError: truncated/corrupted/hostile streams (names the tensor and block).
        ChecksumMismatchError: decoded bytes differ from the original.
    """
    ensure_consistent()
    enc.validate()
    if out is None:
        check_output_size([enc], max_output_bytes)
    job = _Decoding(enc, out, validate=False)
    job.run_all(threads)
    return job.finish(verify)


def decode_rows(enc: EncodedTensor, rows: torch.Tensor) -> torch.Tensor:
    """Decode only the given rows of a 2-D encoded tensor (e.g. the token ids of an embedding).

    Only the blocks covering those rows are decoded. The whole-tensor checksum cannot be checked
    on a partial decode: verify the tensor once with ``decode`` when loading it. The header and
    index are validated first, as by every decode entry point (an index pass, no allocation).
    """
    ensure_consistent()
    from llmcomp_hf.codec.blocks import ERROR_TEXT, decode_block_list

    enc.validate()
    if len(enc.shape) != 2:
        raise ValueError(f"decode_rows needs a 2-D tensor{where(enc.name)}, got shape {list(enc.shape)}")
    n_rows, width = enc.shape
    out_shape = (*rows.shape, width)
    rows = rows.reshape(-1).to(torch.int64)
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n_rows):
        raise IndexError(f"row index out of range [0, {n_rows}){where(enc.name)}")
    unique, inverse = torch.unique(rows, return_inverse=True)
    bs = enc.header["block_size"]
    first = unique * width // bs
    last = (unique * width + width - 1) // bs
    spans = [torch.arange(int(a), int(b) + 1) for a, b in zip(first.tolist(), last.tolist())]
    block_ids = torch.unique(torch.cat(spans)) if spans else torch.empty(0, dtype=torch.int64)
    itemsize, n_planes = DTYPES[enc.dtype]
    kind = layout_of(enc.dtype, itemsize)
    scratch = torch.empty(block_ids.numel() * bs, dtype=torch_dtype(enc.dtype), device="cpu")
    u8 = scratch.view(torch.uint8).numpy() if scratch.numel() else np.empty(0, np.uint8)
    words, _ = _word_views(u8, kind)
    errs = np.zeros(block_ids.numel(), np.int64)
    ids = block_ids.numpy()
    buffers = thread_scratch(1, n_planes, bs)  # reused: embeddings decode rows on every forward
    decode_block_list(enc.data, enc.index, kind, itemsize, enc.numel, bs, n_planes, ids, words, errs,
                      *(part[0] for part in buffers))
    bad = np.flatnonzero(errs)
    if bad.size:
        raise CorruptStreamError(
            f"corrupted encoded stream{where(enc.name)}: block {int(ids[bad[0]])}: "
            f"{ERROR_TEXT.get(int(errs[bad[0]]), 'invalid data')}. Re-download or re-compress the model."
        )
    # Element e of the tensor sits at scratch[slot(e // bs) * bs + e % bs].
    elem = unique[:, None] * width + torch.arange(width)[None, :]
    gathered = scratch[torch.searchsorted(block_ids, elem // bs) * bs + elem % bs]
    return gathered[inverse].reshape(out_shape)


def encode_many(tensors: list[Any], coder: str = "huffman", threads: int | None = None, **kwargs: Any) -> list[EncodedTensor]:
    """Encode many tensors (a model) with ``threads`` threads sharing one queue of block groups.

    Same bytes as calling ``encode`` on each (the output never depends on the thread count); a model
    of many small tensors keeps every thread busy. Tensors go in batches whose staging buffers fit
    the reused one (``_TMP_KEEP_BYTES``). ``kwargs``: ``block_size``, ``min_gain``, ``name`` as in ``encode``.
    """
    ensure_consistent()
    count = thread_count(threads)
    block_size = kwargs.get("block_size", DEFAULT_BLOCK_SIZE)
    cands = [_candidates(t, coder, block_size, kwargs.get("min_gain"), kwargs.get("name")) for t in tensors]
    out: list[EncodedTensor] = []
    start = 0
    while start < len(cands):
        end, total = start + 1, sum(job.tmp_bytes for job in cands[start])
        while end < len(cands) and total + sum(job.tmp_bytes for job in cands[end]) <= _TMP_KEEP_BYTES:
            total += sum(job.tmp_bytes for job in cands[end])
            end += 1
        batch = [job for jobs in cands[start:end] for job in jobs]
        _stage(batch)
        run_parallel([functools.partial(job.run_group, g) for job in batch for g in range(job.n_groups)], count)
        out += [_smallest(jobs) for jobs in cands[start:end]]
        start = end
    return out


def decode_many(encs: list[EncodedTensor], threads: int | None = None, verify: bool = True, *,
                max_output_bytes: int | None = MAX_OUTPUT_BYTES) -> list[torch.Tensor]:
    """Decode many tensors (a model) with ``threads`` threads sharing one queue of block ranges.

    Every tensor is cut into ranges of at most ``MANY_CHUNK_BLOCKS`` blocks; each thread takes the
    next range and decodes it single-threaded (the kernel releases the GIL). A model of many small
    tensors then keeps every thread busy, where per-tensor parallel calls leave threads idle on 1-3
    block tensors and pay a thread-pool launch per tensor. Same bytes and errors as ``decode``;
    ``max_output_bytes`` bounds the outputs of the whole call together, checked before allocating any.
    """
    ensure_consistent()
    count = thread_count(threads)
    for enc in encs:
        enc.validate()
    check_output_size(encs, max_output_bytes)
    jobs = [_Decoding(enc, None, validate=False) for enc in encs]
    run_parallel(_decode_tasks(jobs), count)
    return [job.finish(verify) for job in jobs]


def _decode_tasks(jobs: list[_Decoding]) -> list[Callable[[], None]]:
    """decode_many's queue: ranges of ``MANY_CHUNK_BLOCKS`` blocks, and runs of consecutive one-block
    tensors smaller than a block packed into one task up to about a block's elements (a queue entry
    costs ~10 us of Python, more than decoding a 384-element bias)."""
    tasks: list[Callable[[], None]] = []
    pack: list[_Decoding] = []
    packed = 0
    for job in jobs:
        if job.n_blocks == 1 and job.enc.numel < job.block_size:
            pack.append(job)
            packed += job.enc.numel
            if packed >= job.block_size:
                tasks.append(functools.partial(_decode_each, pack))
                pack, packed = [], 0
            continue
        tasks += [functools.partial(job.run_range, lo, min(lo + MANY_CHUNK_BLOCKS, job.n_blocks))
                  for lo in range(0, job.n_blocks, MANY_CHUNK_BLOCKS)]
    if pack:
        tasks.append(functools.partial(_decode_each, pack))
    return tasks


def _decode_each(jobs: list[_Decoding]) -> None:
    for job in jobs:
        job.run_range(0, job.n_blocks)

