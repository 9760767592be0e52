"""Decode a checkpoint's compressed weights on a background thread while transformers loads.

``from_pretrained`` spends most of a small model's load in Python (key renaming, converters,
module bookkeeping) on one core; the decode kernels release the GIL. So the quantizer starts a
``Prefetcher`` before weight loading: it decodes the lossless weights of the checkpoint in the order
the loader asks for them (transformers sorts keys by ``dot_natural_key``), and ``DecodeOp`` takes
the finished tensor instead of decoding it again. A weight the prefetcher has not started yet is
claimed and decoded by the loader itself, so nothing waits on work that has not begun.

A prefetched weight is matched by its stored header (dtype, shape, coder and the checksum of the
original bytes) and is handed out once. It was decoded from the same shard and its checksum was
verified, so it is bit-identical to what the loader would decode; anything that fails here
(a corrupted block, an unreadable file) is simply left to the loader, whose error names it.
Decoded tensors not yet taken are bounded by ``max_ahead`` bytes.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from collections.abc import Iterable

import numpy as np
import torch

logger = logging.getLogger(__name__)

_PENDING, _RUNNING, _DONE, _TAKEN = range(4)
IDLE_TIMEOUT_S = 10.0


class _Job:
    __slots__ = ("name", "file", "header", "state", "result", "nbytes")

    def __init__(self, name: str, file: str, header: bytes) -> None:
        self.name, self.file, self.header = name, file, header
        self.state, self.result, self.nbytes = _PENDING, None, 0


class Prefetcher:
    """Background decoding of lossless compressed weights ``(name, shard file)``; see the module doc."""

    def __init__(self, weights: Iterable[tuple[str, str]], verify: bool = True, max_ahead: int = 256 << 20) -> None:
        from safetensors import safe_open

        from llmcomp_hf.format.shard import part_key

        self.verify, self.max_ahead = verify, max_ahead
        self._cond = threading.Condition()
        self._closed = False
        self._ahead = 0
        by_file: dict[str, list[str]] = {}
        for name, file in weights:
            by_file.setdefault(file, []).append(name)
        jobs: list[_Job] = []
        for file, names in by_file.items():
            with safe_open(file, framework="pt") as handle:
                for name in names:
                    header = handle.get_tensor(part_key(name, "header")).numpy().tobytes()
                    jobs.append(_Job(name, file, header))
        from transformers.core_model_loading import dot_natural_key  # the loader's own order

        self._jobs = sorted(jobs, key=lambda job: dot_natural_key(job.name))
        self._by_header: dict[bytes, list[_Job]] = {}
        for job in self._jobs:
            self._by_header.setdefault(job.header, []).append(job)
        self._handles = _Handles()
        self._thread = threading.Thread(target=self._run, name="llmcomp-prefetch", daemon=True)

    def start(self) -> Prefetcher:
        self._thread.start()
        return self

    def take(self, header: torch.Tensor) -> torch.Tensor | None:
        """The decoded weight stored with this header, or None: then the caller decodes it.

        While that weight is still being decoded in the background, the caller decodes the next
        pending ones instead of idling (both cores then decode).
        """
        key = header.detach().cpu().contiguous().numpy().tobytes()
        with self._cond:
            for job in self._by_header.get(key, ()):
                if job.state == _PENDING:
                    job.state = _TAKEN  # ours to decode: the background thread skips it
                    return None
                while job.state == _RUNNING:
                    spare = None if self._closed else next((j for j in self._jobs if j.state == _PENDING), None)
                    if spare is None:
                        self._cond.wait()
                    else:
                        self._decode_locked(spare)
                if job.state == _DONE:
                    job.state, result, job.result = _TAKEN, job.result, None
                    self._ahead -= job.nbytes
                    self._cond.notify_all()
                    return result
            return None

    def close(self) -> None:
        """Stop and drop what was not taken (after loading)."""
        with self._cond:
            self._close_locked()
        self._handles.close()

    def _close_locked(self) -> None:
        self._closed = True
        for job in self._jobs:
            if job.state == _DONE:
                job.state, job.result = _TAKEN, None
        self._cond.notify_all()

    def _decode_locked(self, job: _Job) -> None:
        """Decode ``job`` (PENDING) on this thread, single-threaded; called and returns with the lock held."""
        job.state = _RUNNING
        self._cond.release()
        try:
            result = self._decode(job)
        finally:
            self._cond.acquire()
        if result is None or self._closed:
            job.state = _TAKEN  # failed or too late: take() returns None, the loader decodes it
        else:
            job.state, job.result = _DONE, result
            job.nbytes = result.numel() * result.element_size()
            self._ahead += job.nbytes
        self._cond.notify_all()

    def _decode(self, job: _Job) -> torch.Tensor | None:
        from llmcomp_hf.codec import EncodedTensor, decode
        from llmcomp_hf.format.shard import part_key

        try:
            shard = self._handles.get(job.file)
            enc = EncodedTensor.from_parts(bytes(shard.array(part_key(job.name, "header"))),
                                           shard.array(part_key(job.name, "data")),
                                           shard.array(part_key(job.name, "index"), copy=True), name=job.name)
            return decode(enc, threads=1, verify=self.verify)
        except Exception as exc:  # the loader decodes it again and reports the error
            logger.debug("llmcomp prefetch of %s failed: %s", job.name, exc)
            return None

    def _run(self) -> None:
        with self._cond:
            for job in self._jobs:
                while not self._closed and self._ahead >= self.max_ahead:
                    if not self._cond.wait(timeout=IDLE_TIMEOUT_S):
                        self._close_locked()  # nobody takes (the load failed?): stop holding memory
                if self._closed:
                    return
                if job.state == _PENDING:
                    self._decode_locked(job)


class _MappedShard:
    """A safetensors file mapped privately: tensors as numpy views, no copy (the decoder reads them once)."""

    _DTYPES = {"U8": np.uint8, "I64": np.int64}

    def __init__(self, file: str) -> None:
        raw = np.memmap(file, dtype=np.uint8, mode="c")  # private mapping: writable type, never written
        (length,) = struct.unpack("<Q", bytes(raw[:8]))
        self._entries = json.loads(bytes(raw[8 : 8 + length]))
        self._raw, self._start = raw, 8 + length

    def array(self, key: str, copy: bool = False) -> np.ndarray:
        entry = self._entries[key]
        lo, hi = (self._start + int(x) for x in entry["data_offsets"])
        view = self._raw[lo:hi]
        if copy:  # an aligned private copy (int64 views of a mapped file need not be aligned)
            return np.frombuffer(bytes(view), dtype=self._DTYPES[entry["dtype"]])
        return np.asarray(view).view(self._DTYPES[entry["dtype"]])


class _Handles:
    """Mapped shards by file, shared by the threads, dropped together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, _MappedShard] = {}

    def get(self, file: str) -> _MappedShard:
        with self._lock:
            if file not in self._open:
                self._open[file] = _MappedShard(file)
            return self._open[file]

    def close(self) -> None:
        with self._lock:
            self._open.clear()
