"""Read tensors of a safetensors shard with ``pread`` into reusable buffers.

``safe_open`` (used to list and validate every shard, see source.py) memory-maps the file by
default, which keeps every page read so far resident: a shard's worth of RSS. Its ``pread``
backend allocates a fresh buffer per tensor, and the page faults on that fresh memory cost as much
as the copy itself. Here a tensor is read into a buffer from a small pool, reused once the tensor
is consumed, so reading runs at memory-copy speed and RSS stays at a few tensors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.format.safetensors_header import read_header
from llmcomp_hf.paths import open_regular
from llmcomp_hf.stream.source import CODE_TO_NAME, ShardInfo

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
    """Byte ranges of the tensors of one shard (header parsed here, checked against ``info``)."""

    def __init__(self, info: ShardInfo) -> None:
        self.path = os.fspath(info.path)
        self._fd = open_regular(self.path)  # a FIFO is refused, never waited on
        try:
            header = read_header(lambda n, at: self._pread_exact(n, at, "header"), os.fstat(self._fd).st_size, self.path)
            self._start = header.data_start
            self.ranges: dict[str, tuple[int, int]] = {}
            for t in info.tensors:
                entry = header.entries.get(t.name)
                if entry is None or entry.dtype != t.dtype:
                    raise FormatError(f"header entry differs from safe_open's{where(t.name, self.path)}")
                self.ranges[t.name] = (entry.start - self._start, entry.end - self._start)
        except BaseException:
            os.close(self._fd)
            raise
        self.dtypes = {t.name: t.dtype for t in info.tensors}
        self.shapes = {t.name: t.shape for t in info.tensors}

    def nbytes(self, name: str) -> int:
        start, end = self.ranges[name]
        return end - start

    def read_into(self, name: str, buf: np.ndarray) -> np.ndarray:
        """Read tensor ``name``'s raw bytes into ``buf``; returns the uint8 view holding them."""
        start, end = self.ranges[name]
        view = buf[: end - start]
        done, pos = 0, self._start + start
        mv = memoryview(view)
        while done < view.nbytes:
            got = os.preadv(self._fd, [mv[done:]], pos + done)
            if got <= 0:
                raise FormatError(f"shard ended early while reading{where(name, self.path)}; re-download it")
            done += got
        return view

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
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pread_exact(self, n: int, pos: int, what: str) -> bytes:
        data = os.pread(self._fd, n, pos)
        if len(data) != n:
            raise FormatError(f"shard is truncated in its {what}{where(None, self.path)}; re-download it")
        return data


def open_reader(path: Path | str, info: ShardInfo | None = None) -> ShardReader:
    """A ShardReader for ``path`` (its ShardInfo is read when not given)."""
    from llmcomp_hf.stream.source import read_shard

    path = Path(path)
    return ShardReader(info if info is not None else read_shard(path, path.parent))
