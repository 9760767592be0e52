"""Decode a checkpoint's compressed weights on a background thread while transformers loads.

``from_pretrained`` spends most of a small model's load in Python (model construction, key
renaming, converters) on one core; the decode kernels release the GIL. So the quantizer starts a
``Prefetcher`` as soon as it knows the shard files: it decodes the lossless weights in the order
the loader will ask for them (transformers sorts keys by ``dot_natural_key``), and ``DecodeOp``
takes the finished tensor instead of decoding it again.

The weights are described once in flat arrays and decoded by one kernel call per batch
(``codec.jobs.decode_jobs``): a kernel that returned to Python per weight waited for the GIL each
time while the main thread ran Python, which tripled the decode time. Job states are atomic, so
a loader that asks for a weight still being decoded decodes other pending weights of the batch
(from its end) while it waits, and a weight not started yet is claimed and decoded by the loader
itself: nothing waits on work that has not begun.

A prefetched weight is matched by its stored header (dtype, shape, coder and the checksum of the
original bytes) and is handed out once, after its checksum was verified: it is bit-identical to
what the loader would decode. Anything that fails here (a corrupted block, an unreadable file) is
left to the loader, whose error names it. Decoded tensors not yet taken are bounded by
``max_ahead`` bytes (a batch is at most that much, unless one weight is larger).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from llmcomp_hf.codec import jobs as J
from llmcomp_hf.codec import memory
from llmcomp_hf.codec._jit_cache import ensure_consistent
from llmcomp_hf.codec.api import thread_scratch, torch_dtype
from llmcomp_hf.codec.atomics import compare_exchange, load_acquire
from llmcomp_hf.codec.encoded import EncodedTensor, expected_sum, is_checksum
from llmcomp_hf.codec.jobs import CLAIMED, DONE, FAILED, PENDING, RUNNING, decode_jobs
from llmcomp_hf.errors import ChecksumMismatchError, FormatError, LlmcompError, where
from llmcomp_hf.format.inventory import Inventory, inventory
from llmcomp_hf.format.safetensors_file import SafetensorsFile
from llmcomp_hf.format.safetensors_header import CODE_TO_NAME
from llmcomp_hf.format.shard import PLAIN_PREFIX, part_key, raw_checksum, read_tensor_header, split_key

logger = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 10.0
STEAL_MAX_BYTES = 8 << 20  # a waiting loader decodes only weights this small (it must return soon)
_POLL_S = 1e-4


class _Job:
    __slots__ = ("i", "name", "file", "header", "checksum", "dtype", "shape", "nbytes", "out", "taken", "batch")

    def __init__(self, i: int, name: str, file: str) -> None:
        self.i, self.name, self.file = i, name, file
        self.header, self.checksum, self.dtype, self.shape = b"", 0, torch.uint8, (0,)
        self.nbytes, self.out, self.taken, self.batch = 0, None, False, (0, 0)


# A weight decoding to more than this many times its stored bytes (and more than ``max_ahead``) is
# left to the loader: real weights expand 1.2-1.6x; only (nearly) constant ones, or a decompression
# bomb (2 bytes a plane per block can declare any size), expand more.
MAX_EXPANSION = 64


class Prefetcher:
    """Background decoding of lossless compressed weights ``(name, shard file)``; see the module doc.

    The constructor reads the shard headers and describes every weight (~40 us each, on the calling
    thread: a background thread doing it would get the GIL only in 5 ms slices while the main thread
    runs Python); ``start`` then only launches the kernel.
    """

    def __init__(self, weights: Iterable[tuple[str, str]], verify: bool = True, max_ahead: int = 256 << 20,
                 part_files: Mapping[str, str] | None = None, plain_files: Iterable[str] = ()) -> None:
        """``weights``: ``(name, shard file)``; ``part_files``: the file of a part key stored elsewhere
        (transformers may put the parts of one weight in different shards); ``plain_files``: shards whose
        plain tensors are checked against their metadata checksums once decoding is done (``verify``)."""
        from llmcomp_hf._hf_compat import loader_key_order  # the loader's own order

        ensure_consistent()  # before any cached kernel runs
        self.verify, self.max_ahead = verify, max_ahead
        self._part_files = dict(part_files or {})
        named = sorted(dict(weights).items(), key=lambda item: loader_key_order(item[0]))
        self._jobs = [_Job(i, name, file) for i, (name, file) in enumerate(named)]
        self._cond = threading.Condition()
        self._closed = False
        self._ahead = 0
        self._by_header: dict[bytes, list[_Job]] = {}
        self._shards: dict[str, _MappedShard] = {}
        self._state = np.zeros(len(self._jobs), np.int64)
        self._csums = np.zeros(len(self._jobs), np.uint64)
        self._table, self._indexes = self._describe()
        self._batches = self._split()
        if self._batches:
            with self._cond:
                self._allocate_locked(*self._batches[0])
        self.plain_files = list(plain_files) if verify else []
        self._plain_error: Exception | None = None
        self._plain_done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmcomp-prefetch", daemon=True)

    @property
    def weights(self) -> dict[str, str]:
        """``{weight name: shard file}`` this prefetcher decodes (files as given)."""
        return {job.name: job.file for job in self._jobs}

    def serves(self, weights: Mapping[str, str], part_files: Mapping[str, str]) -> bool:
        """Whether this prefetcher reads exactly these ``{weight: file}`` and ``{part key: file}``."""
        return _same_files(self.weights, weights) and _same_files(self._part_files, part_files)

    def start(self) -> Prefetcher:
        self._thread.start()
        return self

    def source(self, header: torch.Tensor) -> str | None:
        """The checkpoint name of the weight stored with this header (None if not one of ours)."""
        jobs = self._by_header.get(header.detach().cpu().contiguous().numpy().tobytes())
        return jobs[0].name if jobs else None

    def take(self, header: torch.Tensor) -> torch.Tensor | None:
        """The decoded weight stored with this header, or None: then the caller decodes it."""
        key = header.detach().cpu().contiguous().numpy().tobytes()
        with self._cond:
            job = next((j for j in self._by_header.get(key, ()) if not j.taken), None)
            if job is None or self._closed:
                return None
            job.taken = True
            if compare_exchange(self._state, job.i, PENDING, CLAIMED) == PENDING:
                self._release_locked(job)  # not started: the caller decodes it now
                return None
        while load_acquire(self._state, job.i) == RUNNING:
            if not self._steal(job):
                time.sleep(_POLL_S)
        ok = load_acquire(self._state, job.i) == DONE and (not self.verify or int(self._csums[job.i]) == job.checksum)
        with self._cond:
            result = job.out if ok else None
            self._release_locked(job)
        return result

    def close(self) -> None:
        """Stop and drop what was not taken (after loading)."""
        with self._cond:
            self._close_locked()

    # -- decoding -----------------------------------------------------------------------------------
    def plain_error(self) -> Exception | None:
        """Once the plain tensors of ``plain_files`` are checked: the first mismatch (an LlmcompError), or None."""
        self._plain_done.wait()
        return self._plain_error

    def _run(self) -> None:
        self._decode_batches()
        try:  # on this thread: the loader's own thread is busy with Python
            for file in self.plain_files:
                shard = self._shards.get(file) or self._shards.setdefault(file, _MappedShard(file))
                shard.check_plain(file)
        except Exception as exc:  # an LlmcompError names tensor and file; anything else is the shard's fault
            self._plain_error = exc if isinstance(exc, LlmcompError) else FormatError(
                f"cannot check the plain tensors{where(None, file)}: {type(exc).__name__}: {exc}; the shard is "
                "damaged: re-download it or re-save the model")
        finally:
            self._plain_done.set()
        # Unmap the files here rather than in the loader's thread (2 ms for 75 MB): at once if every
        # weight is decoded or claimed (no kernel reads the files again), else after close().
        with self._cond:
            while not self._closed and ((self._state == PENDING) | (self._state == RUNNING)).any():
                if not self._cond.wait(timeout=IDLE_TIMEOUT_S):
                    self._close_locked()
            self._shards.clear()

    def _decode_batches(self) -> None:
        for n, (lo, hi) in enumerate(self._batches):
            if n:
                with self._cond:
                    size = sum(job.nbytes for job in self._jobs[lo:hi])
                    while not self._closed and self._ahead and self._ahead + size > self.max_ahead:
                        if not self._cond.wait(timeout=IDLE_TIMEOUT_S):
                            self._close_locked()  # nobody takes (the load failed?): stop holding memory
                    if self._closed:
                        return
                    self._allocate_locked(lo, hi)
            try:
                decode_jobs(self._table, self._indexes, self._state, self._csums, lo, hi, 1, -1, 1 << 62,
                            *self._scratch(lo))
            except Exception as exc:  # defensive: a job left RUNNING would make take() wait forever
                logger.debug("llmcomp prefetch stopped: %s", exc)
                with self._cond:
                    for i in range(lo, hi):
                        compare_exchange(self._state, i, RUNNING, FAILED)
                    self._close_locked()
                return

    def _steal(self, job: _Job) -> bool:
        """While ``job`` decodes elsewhere, decode pending small weights of its batch from the end.
        False when there was nothing to do."""
        lo, hi = job.batch
        pending = self._state[job.i + 1 : hi] == PENDING
        if self._closed or not pending.any():
            return False
        decode_jobs(self._table, self._indexes, self._state, self._csums, hi - 1, job.i, -1, job.i, STEAL_MAX_BYTES,
                    *self._scratch(lo))
        return int(np.count_nonzero(self._state[job.i + 1 : hi] == PENDING)) < int(np.count_nonzero(pending))

    def _scratch(self, lo: int) -> tuple[np.ndarray, ...]:
        """This thread's decode buffers for the plane count and block size of the batch at ``lo``."""
        n_planes, block = int(self._table[lo, J.PLANES]) or 1, int(self._table[lo, J.BLOCK]) or 256
        return tuple(part[0] for part in thread_scratch(1, n_planes, block))

    # -- bookkeeping (lock held) -------------------------------------------------------------------
    def _allocate_locked(self, lo: int, hi: int) -> None:
        for job in self._jobs[lo:hi]:
            if self._state[job.i] == PENDING and job.out is None:
                job.out = memory.empty(job.shape, job.dtype)
                self._table[job.i, J.OUT] = job.out.data_ptr()  # kept alive by job.out while it may run
                self._ahead += job.nbytes

    def _release_locked(self, job: _Job) -> None:
        if job.out is not None:
            job.out = None
            self._ahead -= job.nbytes
            self._cond.notify_all()

    def _close_locked(self) -> None:
        self._closed = True
        for job in self._jobs:
            compare_exchange(self._state, job.i, PENDING, CLAIMED)
            if self._state[job.i] != RUNNING:  # a running kernel still writes into its output
                self._release_locked(job)
        self._cond.notify_all()

    # -- description: every weight in flat arrays ---------------------------------------------------
    def _describe(self) -> tuple[np.ndarray, np.ndarray]:
        table = np.zeros((len(self._jobs), J.COLUMNS), np.int64)
        indexes: list[np.ndarray] = []
        at = 0
        for job in self._jobs:
            try:
                header = self._part(job, "header")
                job.header = header.tobytes()
                self._by_header.setdefault(job.header, []).append(job)
                index, data = self._part(job, "index"), self._part(job, "data")
                # the loader's own checks: the header tensor (dtype, size, JSON) here, its fields and the
                # arrays in job_row, the index in the kernel (as EncodedTensor.validate does): same verdicts
                parsed = read_tensor_header(job.name, torch.from_numpy(header), job.file, validate=False)
                enc = EncodedTensor(parsed, data, index, job.name)  # the kernel reads the mapping itself
                row = J.job_row(enc, at)  # reads the mapped file in place: self._shards keeps it
            except Exception as exc:  # left to the loader, which names the problem
                logger.debug("llmcomp prefetch skips %s: %s", job.name, exc)
                self._state[job.i] = CLAIMED
                continue
            if enc.original_nbytes > max(self.max_ahead, MAX_EXPANSION * (data.nbytes + index.nbytes)):
                # mostly constant blocks, or a hostile size: not allocated ahead; the loader checks the
                # declared shape against the parameter before it decodes the weight itself
                logger.debug("llmcomp prefetch leaves %s to the loader: %d bytes from %d", job.name,
                             enc.original_nbytes, data.nbytes + index.nbytes)
                self._state[job.i] = CLAIMED
                continue
            table[job.i] = row
            job.checksum = expected_sum(enc.header)  # the sum32 the decoded bytes must have
            job.dtype, job.shape, job.nbytes = torch_dtype(enc.dtype), tuple(enc.shape), int(table[job.i, J.NBYTES])
            indexes.append(index.view(np.uint8))
            at += index.shape[0]
        aligned = np.concatenate(indexes).view(np.int64) if indexes else np.zeros(0, np.int64)
        return table, aligned

    def _part(self, job: _Job, part: str) -> np.ndarray:
        key = part_key(job.name, part)
        file = self._part_files.get(key, job.file)
        shard = self._shards.get(file) or self._shards.setdefault(file, _MappedShard(file))
        return shard.array(key)

    def _split(self) -> list[tuple[int, int]]:
        """Runs of consecutive jobs with one (planes, block size) scratch shape, <= max_ahead bytes each."""
        shape = self._table[:, [J.PLANES, J.BLOCK]]
        out: list[tuple[int, int]] = []
        lo, size = 0, 0
        for i, job in enumerate(self._jobs):
            if i > lo and ((shape[i] != shape[lo]).any() or size + job.nbytes > self.max_ahead):
                out.append((lo, i))
                lo, size = i, 0
            size += job.nbytes
        if self._jobs:
            out.append((lo, len(self._jobs)))
        for lo, hi in out:
            for job in self._jobs[lo:hi]:
                job.batch = (lo, hi)
        return out


class _MappedShard:
    """A safetensors file mapped privately: tensors as numpy views, no copy (the decoder reads them once)."""

    _DTYPES = {"U8": np.uint8, "I64": np.int64}

    def __init__(self, file: str) -> None:
        with SafetensorsFile(file, mapped=True) as handle:  # the mapping outlives the descriptor
            self.header = handle.header
            self.raw = handle.raw if handle.raw is not None else np.zeros(0, np.uint8)

    def check_plain(self, file: str) -> None:
        """``format.shard.check_plain`` over this mapping: plain tensors with a ``llmcomp.plain.<key>`` entry."""
        metadata = self.header.metadata
        for key, entry in self.header.entries.items():
            want = metadata.get(PLAIN_PREFIX + key)
            if want is None or split_key(key)[1] is not None:
                continue
            got = raw_checksum(self.raw[entry.start : entry.end], CODE_TO_NAME.get(entry.dtype, entry.dtype),
                               list(entry.shape))
            if not is_checksum(want) or got != want.lower():
                raise ChecksumMismatchError(
                    f"checksum mismatch{where(key, file)}: the stored bytes hash to {got}, expected {want!r}. "
                    "The shard is corrupted: re-download it or re-save the model.")

    def array(self, key: str) -> np.ndarray:
        """Tensor ``key`` as a view of the mapping (int64 views need not be aligned)."""
        entry = self.header.entries[key]  # offsets checked against the file by read_header
        return self.raw[entry.start : entry.end].view(self._DTYPES[entry.dtype])


def prefetch_checkpoint(files: list[str], verify: bool) -> Prefetcher | None:
    """A started prefetcher for the lossless checkpoint of these shards, or None when there is none
    (lossy weights, unreadable or incomplete files: the loader reports those, with names)."""
    try:
        found = discover(files)
        if not found.weights or found.lossy:
            return None
        return Prefetcher(found.bases.items(), verify, part_files=found.part_files, plain_files=files).start()
    except Exception as exc:
        logger.debug("llmcomp: no early prefetch (%s)", exc)
        return None


def discover(files: list[str]) -> Inventory:
    """The compressed weights of these shards and where their parts are (the loaders' key-set rules checked)."""
    from llmcomp_hf.format.reader import shard_keys

    return inventory((file, shard_keys(file)[0]) for file in files)


def _same_files(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Whether two ``{key: file}`` maps agree, files compared by their real paths."""
    if a.keys() != b.keys():
        return False
    real = {f: os.path.realpath(f) for f in {*a.values(), *b.values()}}  # a few files, many keys
    return all(real[a[k]] == real[b[k]] for k in a)
