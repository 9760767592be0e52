"""The header of a safetensors file, parsed and checked once for the readers that do not use safe_open.

``_prefetch`` maps shards and ``stream.reader`` reads byte ranges with ``pread``; both take the tensor
table from :func:`read_header`, so a damaged or crafted header gets the same verdict in each: a
FormatError naming the file (and tensor), never an exception of another type or a range outside the
file. (``format.reader`` and ``stream.source`` go through safetensors' own ``safe_open``.)
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from llmcomp_hf.codec.encoded import load_json_object
from llmcomp_hf.errors import FormatError, where

MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
            "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@dataclass(frozen=True)
class Entry:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


@dataclass
class Header:
    entries: dict[str, Entry] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 8


def read_header(read: Callable[[int, int], bytes], size: int, file: str) -> Header:
    """The checked tensor table of a safetensors file of ``size`` bytes; ``read(n, offset)`` returns bytes.

    Every entry must have a known dtype, a shape of non-negative ints and data offsets inside the file
    whose length matches the shape; ``__metadata__`` must map strings to strings.
    """
    at = where(None, file)
    if size < 8:
        raise FormatError(f"not a safetensors file ({size} bytes){at}; the file is truncated: re-download it")
    (n,) = struct.unpack("<Q", read(8, 0))
    if n > min(size - 8, MAX_HEADER):
        raise FormatError(f"safetensors header of {n} bytes runs past the end of the file{at}; re-download it")
    table = load_json_object(read(n, 8), "safetensors header", at)
    out = Header(data_start=8 + n)
    for name, entry in table.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in entry.items()):
                raise FormatError(f"safetensors __metadata__ is not a map of strings{at}; re-download the file")
            out.metadata = dict(entry)
            continue
        out.entries[name] = _entry(name, entry, out.data_start, size, file)
    return out


def _entry(name: str, entry: object, data_start: int, size: int, file: str) -> Entry:
    at = where(name, file)
    if not isinstance(entry, dict):
        raise FormatError(f"safetensors header entry is not an object{at}; re-download the file")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in ITEMSIZE:
        raise FormatError(f"unknown safetensors dtype {dtype!r}{at}; re-download the file")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape) or len(shape) > 64:
        raise FormatError(f"bad shape {str(shape)[:80]}{at}; re-download the file")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(x) is int for x in offsets)):
        raise FormatError(f"bad data_offsets {str(offsets)[:80]}{at}; re-download the file")
    start, end = data_start + offsets[0], data_start + offsets[1]
    if not data_start <= start <= end <= size:
        raise FormatError(f"tensor bytes lie outside the file{at}; the file is truncated: re-download it")
    if end - start != math.prod(shape) * ITEMSIZE[dtype]:
        raise FormatError(f"tensor holds {end - start} bytes, its shape {shape} needs "
                          f"{math.prod(shape) * ITEMSIZE[dtype]}{at}; re-download the file")
    return Entry(dtype, tuple(shape), start, end)


__all__ = ["Entry", "Header", "ITEMSIZE", "read_header"]
