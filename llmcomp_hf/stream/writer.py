"""Write one safetensors file tensor by tensor, never holding the whole file in memory.

safetensors puts a JSON header (names, dtypes, shapes, byte offsets) before the data, so a writer
normally needs every tensor up front. Here the header space is reserved first, with an upper bound
of its length; tensors are written at their offsets as they arrive; the real header, padded with
spaces (as safetensors itself pads), is written last. Layout:

* ``fixed`` tensors (size known in advance: plain tensors, index arrays) come first, ordered by
  item size, largest first, so every tensor starts aligned to its item size;
* ``deferred`` tensors (1-byte items whose size is only known once encoded) follow, in the order
  they are appended.

The result is an ordinary safetensors file: ``safe_open`` and transformers read it as any other.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from llmcomp_hf.errors import LlmcompError

ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}
_BIG = 2**64 - 1  # placeholder with the most digits an offset can have
_ALIGN = 8


def dtype_itemsize(code: str, name: str = "") -> int:
    """Bytes per element of a safetensors dtype code; LlmcompError for codes this writer cannot place."""
    if code not in ITEMSIZE:
        raise LlmcompError(
            f"tensor {name!r} has safetensors dtype {code!r}, which llmcomp cannot copy yet; "
            f"supported: {sorted(ITEMSIZE)}"
        )
    return ITEMSIZE[code]


@dataclass
class _Entry:
    dtype: str
    shape: list[int]
    nbytes: int | None  # None until a deferred tensor is appended
    offset: int | None = None
    written: bool = False


@dataclass
class StreamingShardWriter:
    """Create ``path`` from fixed and deferred tensors; see the module docstring.

    Usage: ``add_fixed``/``add_deferred`` for every tensor, ``start()``, then ``write_fixed`` /
    ``append`` in any order, then ``finish()``. ``abort()`` closes and removes the partial file.
    """

    path: str
    metadata: dict[str, str] = field(default_factory=dict)
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _fd: int | None = None
    _data_start: int = 0
    _cursor: int = 0
    _reserved: int = 0

    def add_fixed(self, name: str, dtype: str, shape: list[int]) -> None:
        """Declare a tensor whose size follows from its dtype and shape."""
        numel = 1
        for dim in shape:
            numel *= int(dim)
        self._add(name, _Entry(dtype, [int(d) for d in shape], numel * dtype_itemsize(dtype, name)))

    def add_deferred(self, name: str) -> None:
        """Declare a 1-D uint8 tensor whose length is known only when it is appended."""
        self._add(name, _Entry("U8", [_BIG], None))

    def _add(self, name: str, entry: _Entry) -> None:
        if self._fd is not None:
            raise RuntimeError("StreamingShardWriter: declare every tensor before start()")
        if name in self._entries or name == "__metadata__":
            raise LlmcompError(f"tensor name {name!r} appears twice in shard {self.path!r}")
        self._entries[name] = entry

    def start(self) -> None:
        """Lay out the fixed tensors, reserve the header and open the file."""
        fixed = [(n, e) for n, e in self._entries.items() if e.nbytes is not None]
        fixed.sort(key=lambda item: -ITEMSIZE[item[1].dtype])  # stable: declaration order within a size
        pos = 0
        for _, entry in fixed:
            entry.offset = pos
            pos += entry.nbytes or 0
        self._cursor = pos
        self._reserved = _padded(len(self._header()))
        self._data_start = 8 + self._reserved
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write_fixed(self, name: str, data: Any) -> None:
        """Write a fixed tensor's bytes (anything exposing the buffer protocol)."""
        entry = self._entry(name)
        view = memoryview(data).cast("B")
        if entry.nbytes is None or view.nbytes != entry.nbytes:
            raise LlmcompError(
                f"tensor {name!r}: got {view.nbytes} bytes, declared {entry.nbytes} in shard {self.path!r}"
            )
        self._pwrite(view, self._data_start + (entry.offset or 0))
        entry.written = True

    def append(self, name: str, data: Any) -> None:
        """Write a deferred tensor's bytes after everything written so far."""
        entry = self._entry(name)
        if entry.nbytes is not None:
            raise LlmcompError(f"tensor {name!r} is fixed-size in shard {self.path!r}; use write_fixed")
        view = memoryview(data).cast("B")
        entry.offset, entry.nbytes, entry.shape = self._cursor, view.nbytes, [view.nbytes]
        self._pwrite(view, self._data_start + self._cursor)
        self._cursor += view.nbytes
        entry.written = True

    def finish(self) -> int:
        """Write the header and close; returns the bytes of tensor data. Every tensor must be written."""
        missing = [n for n, e in self._entries.items() if not e.written]
        if missing:
            self.abort()
            raise LlmcompError(f"shard {self.path!r} is missing tensors {missing[:5]} (internal error)")
        header = self._header()
        if len(header) > self._reserved:  # cannot happen: the placeholder has the most digits
            self.abort()
            raise RuntimeError("safetensors header outgrew its reservation")
        header += b" " * (self._reserved - len(header))
        self._pwrite(memoryview(len(header).to_bytes(8, "little") + header), 0)
        os.ftruncate(self._fd, self._data_start + self._cursor)
        os.close(self._fd)
        self._fd = None
        return self._cursor

    def abort(self) -> None:
        """Close and delete the partial file (safe to call twice)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if os.path.exists(self.path):
            os.remove(self.path)

    def _entry(self, name: str) -> _Entry:
        if self._fd is None:
            raise RuntimeError("StreamingShardWriter: call start() first")
        entry = self._entries.get(name)
        if entry is None:
            raise LlmcompError(f"tensor {name!r} was not declared for shard {self.path!r}")
        if entry.written:
            raise LlmcompError(f"tensor {name!r} written twice to shard {self.path!r}")
        return entry

    def _pwrite(self, view: memoryview, pos: int) -> None:
        while view.nbytes:
            done = os.pwrite(self._fd, view, pos)
            view, pos = view[done:], pos + done

    def _header(self) -> bytes:
        head: dict[str, Any] = {"__metadata__": dict(self.metadata)} if self.metadata else {}
        for name, e in self._entries.items():
            if e.offset is None:  # a deferred tensor not appended yet: widest possible numbers
                offsets = [_BIG, _BIG]
            else:
                offsets = [e.offset, e.offset + (e.nbytes or 0)]
            head[name] = {"dtype": e.dtype, "shape": e.shape, "data_offsets": offsets}
        return json.dumps(head, separators=(",", ":")).encode("utf-8")


def _padded(n: int) -> int:
    """Header length such that the data starts 8-byte aligned (8-byte length prefix + header)."""
    return n + (-(8 + n)) % _ALIGN
