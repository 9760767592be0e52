"""The one reader of safetensors files in this package: the header checked once, tensors read by pread or map.

:class:`SafetensorsFile` opens regular files only (a FIFO named ``*.safetensors`` is refused, never
waited on), takes its tensor table from :func:`~llmcomp_hf.format.safetensors_header.read_header`
(safetensors' rules: a damaged or crafted header is a FormatError naming the file and tensor), and
reads a tensor's bytes either with ``pread`` into a fresh or caller-owned buffer (nothing stays
resident, unlike a memory map that keeps every page touched) or, opened with ``mapped=True``, as views
of a private read-only mapping (the prefetcher's zero-copy path). Offsets were checked against the
file's size, so no read ever leaves the file.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.format.safetensors_header import TORCH_NAME, Entry, read_header
from llmcomp_hf.paths import open_regular


class SafetensorsFile:
    """One safetensors file: ``keys()`` (file order), ``metadata()``, ``entry(key)``, tensors by name."""

    def __init__(self, path: str | os.PathLike, *, mapped: bool = False) -> None:
        self.path = os.fspath(path)
        self._fd = open_regular(self.path)
        self.raw: np.ndarray | None = None
        try:
            size = os.fstat(self._fd).st_size
            if mapped and size:
                # ACCESS_COPY: a private mapping (numpy sees a writable buffer; nothing ever writes to it)
                self.raw = np.frombuffer(mmap.mmap(self._fd, size, access=mmap.ACCESS_COPY), np.uint8)
                self.header = read_header(self._from_map, size, self.path)
            else:
                self.header = read_header(self._pread_exact, size, self.path)
        except BaseException:
            self.close()
            raise

    # -- the table ------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return sorted(self.header.entries, key=lambda k: self.header.entries[k].start)

    def metadata(self) -> dict[str, str]:
        return self.header.metadata

    def entry(self, key: str) -> Entry:
        found = self.header.entries.get(key)
        if found is None:
            raise FormatError(f"tensor is not in this shard{where(key, self.path)}; the checkpoint's index "
                              "or the shard is damaged: re-download it")
        return found

    def nbytes(self, key: str) -> int:
        entry = self.entry(key)
        return entry.end - entry.start

    # -- the bytes ------------------------------------------------------------------------------
    def read_into(self, key: str, buf: np.ndarray) -> np.ndarray:
        """Read tensor ``key``'s raw bytes into ``buf`` (uint8, large enough); returns the view holding them."""
        entry = self.entry(key)
        view = buf[: entry.end - entry.start]
        if self.raw is not None:
            view[:] = self.raw[entry.start : entry.end]
            return view
        done, mv = 0, memoryview(view)
        while done < view.nbytes:
            got = os.preadv(self._fd, [mv[done:]], entry.start + done)
            if got <= 0:
                raise FormatError(f"shard ended early while reading{where(key, self.path)}; re-download it")
            done += got
        return view

    def array(self, key: str) -> np.ndarray:
        """Tensor ``key``'s raw bytes as uint8: a view of the mapping (``mapped=True``) or a fresh buffer."""
        if self.raw is not None:
            entry = self.entry(key)
            return self.raw[entry.start : entry.end]
        return self.read_into(key, np.empty(self.nbytes(key), np.uint8))

    def get_tensor(self, key: str) -> Any:
        """Tensor ``key`` as a torch tensor of its stored dtype and shape, owning fresh memory."""
        import torch

        entry = self.entry(key)
        name = TORCH_NAME.get(entry.dtype)
        if name is None or not hasattr(torch, name):
            raise FormatError(f"safetensors dtype {entry.dtype} cannot be read into torch here{where(key, self.path)}")
        dtype = getattr(torch, name)
        if entry.end == entry.start:
            return torch.empty(entry.shape, dtype=dtype)
        raw = self.read_into(key, np.empty(entry.end - entry.start, np.uint8))
        return torch.from_numpy(raw).view(dtype).reshape(entry.shape)

    # -- life cycle -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pread_exact(self, n: int, pos: int) -> bytes:
        data = os.pread(self._fd, n, pos)
        if len(data) != n:
            raise FormatError(f"shard is truncated in its header{where(None, self.path)}; re-download it")
        return data

    def _from_map(self, n: int, pos: int) -> bytes:
        return bytes(self.raw[pos : pos + n])  # type: ignore[index]


__all__ = ["SafetensorsFile"]
