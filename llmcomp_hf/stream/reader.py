"""Read tensors of a safetensors shard with ``pread`` into reusable buffers.

A fresh buffer per tensor costs as much in page faults as the copy itself, and a memory map keeps
every page read so far resident (a shard's worth of RSS). Here a tensor is read (through
``format.safetensors_file.SafetensorsFile``, the package's one reader) into a buffer from a small
pool, reused once the tensor is consumed, so reading runs at memory-copy speed and RSS stays at a
few tensors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.format.safetensors_file import SafetensorsFile
from llmcomp_hf.format.safetensors_header import CODE_TO_NAME
from llmcomp_hf.stream.source import ShardInfo

SMALL = 1 << 16  # smaller buffers are not pooled: cheap to allocate, and they would crowd out big ones


class BufferPool:
    """Reusable uint8 buffers of SMALL bytes or more: at most ``keep`` owned (taken + free) are retained.

    A buffer given back while more than ``keep`` are owned is dropped (smallest first), so the pool
    never holds more than the work in flight needs. Not thread-safe: take and give from the thread
    that schedules the work.
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = max(1, keep)
        self._free: list[np.ndarray] = []
        self._taken = 0

    def take(self, nbytes: int) -> np.ndarray:
        """A buffer of at least ``nbytes`` bytes (its content is garbage)."""
        if nbytes < SMALL:
            return np.empty(max(nbytes, 64), np.uint8)
        self._taken += 1
        fits = [i for i, b in enumerate(self._free) if b.nbytes >= nbytes]
        if fits:
            return self._free.pop(min(fits, key=lambda i: self._free[i].nbytes))
        self._trim()  # make room: the new buffer counts as owned
        return np.empty(max(nbytes, 64), np.uint8)

    def give(self, buf: np.ndarray) -> None:
        """Return a buffer taken earlier; nothing may use it afterwards."""
        if buf.nbytes < SMALL:
            return
        self._taken = max(0, self._taken - 1)
        self._free.append(buf)
        self._trim()

    def clear(self) -> None:
        """Drop every kept buffer (their memory goes back to the system)."""
        self._free.clear()

    def _trim(self) -> None:
        while self._free and len(self._free) + self._taken > self.keep:
            self._drop_smallest()

    def _drop_smallest(self) -> None:  # by index: list.remove would compare arrays element-wise
        self._free.pop(min(range(len(self._free)), key=lambda i: self._free[i].nbytes))


class ShardReader:
    """Tensors of one listed shard read into pooled buffers (the file must still hold what ``info`` lists)."""

    def __init__(self, info: ShardInfo) -> None:
        self.path = os.fspath(info.path)
        self._file = SafetensorsFile(self.path)  # a FIFO is refused, never waited on; header checked
        try:
            for t in info.tensors:
                entry = self._file.header.entries.get(t.name)
                if entry is None or entry.dtype != t.dtype or entry.shape != t.shape:
                    raise FormatError(f"the shard changed since it was listed{where(t.name, self.path)}; "
                                      "run again once nothing else writes to the folder")
        except BaseException:
            self._file.close()
            raise
        self.dtypes = {t.name: t.dtype for t in info.tensors}
        self.shapes = {t.name: t.shape for t in info.tensors}

    def nbytes(self, name: str) -> int:
        return self._file.nbytes(name)

    def read_into(self, name: str, buf: np.ndarray) -> np.ndarray:
        """Read tensor ``name``'s raw bytes into ``buf``; returns the uint8 view holding them."""
        return self._file.read_into(name, buf)

    def read(self, name: str, pool: BufferPool) -> tuple[Any, np.ndarray]:
        """(torch tensor viewing the bytes, buffer to give back to ``pool`` once the tensor is unused)."""
        import torch

        buf = pool.take(self.nbytes(name))
        raw = self.read_into(name, buf)
        shape = self.shapes[name]
        dname = CODE_TO_NAME.get(self.dtypes[name])
        if dname is None:
            raise FormatError(f"dtype {self.dtypes[name]!r} cannot be decoded here{where(name, self.path)}")
        dtype = getattr(torch, dname)
        tensor = torch.from_numpy(raw).view(dtype).reshape(shape) if raw.size else torch.empty(shape, dtype=dtype)
        return tensor, buf

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_reader(path: Path | str, info: ShardInfo | None = None) -> ShardReader:
    """A ShardReader for ``path`` (its ShardInfo is read when not given)."""
    from llmcomp_hf.stream.source import read_shard

    path = Path(path)
    return ShardReader(info if info is not None else read_shard(path, path.parent))
