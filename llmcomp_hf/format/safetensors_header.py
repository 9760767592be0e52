"""The header of a safetensors file, parsed and checked once, with safetensors' own rules.

Every reader of this package takes its tensor table from :func:`read_header` (through
``format.safetensors_file.SafetensorsFile``), so a damaged or crafted header gets the same verdict
everywhere: a FormatError naming the file (and tensor), never an exception of another type or a range
outside the file. The rules are at least those of ``safe_open``, which transformers uses: a file this
accepts is one transformers can read (tensors tile the data section exactly, no gap, overlap or tail).
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


# safetensors dtype code <-> llmcomp format dtype name (docs/format.md part 1): the dtypes llmcomp handles
CODE_TO_NAME = {
    "BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I8": "int8", "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64",
    "BOOL": "bool",
}
NAME_TO_CODE = {name: code for code, name in CODE_TO_NAME.items()}
TORCH_NAME = {**CODE_TO_NAME, "U16": "uint16", "U32": "uint32", "U64": "uint64"}  # every code torch can hold


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
    _check_tiling(out, size, file)
    return out


def _check_tiling(header: Header, size: int, file: str) -> None:
    """safetensors' layout rule: in offset order, each tensor starts where the previous one ended, and the
    last one ends at the end of the file (``safe_open`` refuses anything else, so transformers would)."""
    at = header.data_start
    for name, entry in sorted(header.entries.items(), key=lambda item: (item[1].start, item[1].end)):
        if entry.start != at:
            raise FormatError(f"tensor bytes overlap another tensor or leave a gap before them{where(name, file)}; "
                              "the file is damaged: re-download it")
        at = entry.end
    if at != size:
        raise FormatError(f"{size - at} bytes after the last tensor are not covered by the header{where(None, file)}; "
                          "the file is damaged or was appended to: re-download it")


def _entry(name: str, entry: object, data_start: int, size: int, file: str) -> Entry:
    def bad(what: str) -> FormatError:  # messages built only when needed: a header has thousands of entries
        return FormatError(f"{what}{where(name, file)}; the file is damaged or truncated: re-download it")

    if not isinstance(entry, dict):
        raise bad("safetensors header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if type(dtype) is not str or dtype not in ITEMSIZE:  # a list or dict is not hashable
        raise bad(f"unknown safetensors dtype {str(dtype)[:40]!r}")
    if type(shape) is not list or len(shape) > 64 or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"bad shape {str(shape)[:80]}")
    if type(offsets) is not list or len(offsets) != 2 or type(offsets[0]) is not int or type(offsets[1]) is not int:
        raise bad(f"bad data_offsets {str(offsets)[:80]}")
    start, end = data_start + offsets[0], data_start + offsets[1]
    if not data_start <= start <= end <= size:
        raise bad("tensor bytes lie outside the file")
    if end - start != math.prod(shape) * ITEMSIZE[dtype]:
        raise bad(f"tensor holds {end - start} bytes, its shape {shape} needs {math.prod(shape) * ITEMSIZE[dtype]}")
    return Entry(dtype, tuple(shape), start, end)


__all__ = ["CODE_TO_NAME", "Entry", "Header", "ITEMSIZE", "NAME_TO_CODE", "TORCH_NAME", "read_header"]
