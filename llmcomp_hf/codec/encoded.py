"""The encoded-tensor container: a JSON-serialisable header plus two flat numpy arrays.

See docs/format.md, part 1. Validation here runs before any kernel touches the arrays.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from llmcomp_hf.errors import CorruptStreamError, FormatError, where

FORMAT_NAME = "llmcomp.tensor"
FORMAT_VERSION = 1  # what encoders write, except for the rans-ctx coder (version 2)
FORMAT_VERSIONS = (1, 2)  # what decoders read; version 2 adds section mode 4 (rANS with context)
MODE_RANS_CTX = 4
CODERS = ("huffman", "rans", "raw", "rans-ctx")
VERSION_2_CODERS = ("rans-ctx",)  # coders whose streams may hold mode-4 sections
MIN_BLOCK, MAX_BLOCK = 256, 1 << 24
MAX_NUMEL = 1 << 40

# dtype name -> (itemsize, planes). Float formats get the sign/exponent/mantissa split of
# docs/format.md; every other dtype is byte-grouped (one plane per byte).
DTYPES: dict[str, tuple[int, int]] = {
    "bfloat16": (2, 2),
    "float16": (2, 2),
    "float32": (4, 4),
    "float64": (8, 8),
    "float8_e4m3fn": (1, 1),
    "float8_e5m2": (1, 1),
    "int8": (1, 1),
    "uint8": (1, 1),
    "int16": (2, 2),
    "int32": (4, 4),
    "int64": (8, 8),
    "bool": (1, 1),
}


@dataclass
class EncodedTensor:
    """One compressed tensor: ``header`` (JSON-serialisable) and ``data``/``index`` arrays.

    ``data`` is uint8 (the encoded blocks), ``index`` is int64 (``n_blocks + 1`` byte offsets).
    ``name`` is only used to make error messages precise; it is not part of the format.
    """

    header: dict[str, Any]
    data: np.ndarray
    index: np.ndarray
    name: str | None = field(default=None, compare=False)

    @property
    def dtype(self) -> str:
        return str(self.header["dtype"])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.header["shape"])

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][0]

    @property
    def original_nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def nbytes(self) -> int:
        """Stored size: both arrays plus the header as compact JSON."""
        return int(self.data.nbytes + self.index.nbytes + len(self.header_json()))

    @property
    def ratio(self) -> float:
        """Stored size over original size (1.0 for an empty tensor)."""
        return self.nbytes / self.original_nbytes if self.original_nbytes else 1.0

    def header_json(self) -> str:
        return json.dumps(self.header, separators=(",", ":"), sort_keys=True)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays a container must store, by their canonical names."""
        return {"data": self.data, "index": self.index}

    @classmethod
    def from_parts(
        cls,
        header: dict[str, Any] | str,
        data: Any,
        index: Any,
        name: str | None = None,
    ) -> "EncodedTensor":
        """Build from a header (dict or JSON text) and arrays (numpy or CPU torch tensors), validated."""
        if isinstance(header, (str, bytes)):
            header = load_json_object(header, "encoded-tensor header", where(name))
        if not isinstance(header, dict):
            raise FormatError(f"encoded-tensor header must be a JSON object{where(name)}, got {type(header).__name__}")
        enc = cls(dict(header), _as_numpy(data, np.uint8, "data", name), _as_numpy(index, np.int64, "index", name), name)
        enc.validate()
        return enc

    def validate(self, check_index: bool = True) -> None:
        """Check header and index against the format; raise FormatError/CorruptStreamError.

        ``check_index=False`` skips the pass over the index (offsets, block sizes), for a caller whose
        kernel runs the same check (``_index_fault``) itself before decoding.
        """
        h, at = self.header, where(self.name)
        validate_header(h, self.name)
        version, bs = h["version"], h["block_size"]
        for arr, what, dtype in ((self.data, "data", _UINT8), (self.index, "index", _INT64)):
            # numpy on the host; device arrays (numba/torch CUDA) are checked by dtype name and rank.
            if isinstance(arr, np.ndarray):
                ok = arr.dtype == dtype and arr.ndim == 1
            else:
                ok = str(getattr(arr, "dtype", "")).removeprefix("torch.") == dtype.name and getattr(arr, "ndim", None) == 1
            if not ok:
                raise FormatError(
                    f"{what} must be a 1-D {dtype.name} array{at}, got "
                    f"{getattr(arr, 'dtype', type(arr).__name__)} {getattr(arr, 'shape', '')}"
                )
        n_blocks = -(-self.numel // bs)
        if self.index.shape[0] != n_blocks + 1:
            raise CorruptStreamError(
                f"index has {self.index.shape} entries, expected {n_blocks + 1} for {self.numel} elements "
                f"in blocks of {bs}{at}; the stream is truncated or from another tensor"
            )
        if not check_index:
            return
        idx = self.index if isinstance(self.index, np.ndarray) else _host_copy(self.index)
        on_host = isinstance(self.data, np.ndarray)
        fault = _index_fault(np.ascontiguousarray(idx), self.data.shape[0], 2 * DTYPES[h["dtype"]][1],
                             self.data if on_host else _NO_DATA, version < 2 and on_host)
        if fault == _NOT_COVERED:
            raise CorruptStreamError(
                f"block index does not cover the data ({int(idx[-1])} vs {self.data.shape[0]} bytes){at}; "
                "the file is truncated or corrupted: re-download or re-compress it"
            )
        if fault == _SHORT_BLOCK:  # every plane section takes >= 2 bytes: rejected before allocating the output
            raise CorruptStreamError(
                f"a block is shorter than the {2 * DTYPES[h['dtype']][1]} bytes any block needs{at}; "
                "the file is truncated or corrupted: re-download or re-compress it"
            )
        if fault == _MODE4_IN_V1:
            raise CorruptStreamError(f"a version-1 stream holds a mode-4 section{at}; the file is corrupted: re-download or re-compress it")


def load_json_object(raw: bytes | str, what: str, at: str) -> dict[str, Any]:
    """Parse stored JSON (UTF-8 bytes or text) that must be an object; FormatError otherwise.

    ``what`` names the object in the message, ``at`` is a ``where(...)`` suffix. Invalid UTF-8,
    invalid JSON, numbers Python refuses and nesting deep enough to exhaust the recursion limit are
    all reported as damage, never as the parser's own exception types.
    """
    try:
        obj = json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise FormatError(f"{what} is not valid UTF-8 JSON{at}: {reason}. The file is damaged: re-download "
                          "it or re-compress the model.") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{what} must be a JSON object{at}, got {type(obj).__name__}. The file is damaged: "
                          "re-download it or re-compress the model.")
    return obj


def validate_header(h: Any, name: str | None = None) -> None:
    """Check an encoded-tensor header alone (docs/format.md part 1); FormatError naming ``name``.

    The one check of the header object: ``EncodedTensor.validate`` and every reader that looks at a
    header before the arrays (``llmcomp_hf.format.check_declared``) call it.
    """
    at = where(name)
    if not isinstance(h, dict) or h.get("format") != FORMAT_NAME:
        fmt = h.get("format") if isinstance(h, dict) else h
        raise FormatError(f"not an llmcomp encoded tensor{at}: header format is {fmt!r}")
    version = h.get("version")
    if type(version) is not int or version not in FORMAT_VERSIONS:
        raise FormatError(
            f"unsupported llmcomp format version {version!r}{at}; this llmcomp-hf reads versions "
            f"{', '.join(map(str, FORMAT_VERSIONS))}. Upgrade llmcomp-hf (pip install -U llmcomp-hf) or re-compress the model."
        )
    if not isinstance(h.get("dtype"), str) or h["dtype"] not in DTYPES:
        raise FormatError(f"unsupported dtype {h.get('dtype')!r}{at}; known: {sorted(DTYPES)}")
    if not isinstance(h.get("coder"), str) or h["coder"] not in CODERS:
        raise FormatError(f"unknown coder {h.get('coder')!r}{at}; known: {list(CODERS)}")
    if version < format_version(h["coder"]):
        raise FormatError(f"coder {h['coder']!r} needs format version {format_version(h['coder'])}{at}, header says {version}")
    shape = h.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise FormatError(f"shape must be a list of non-negative ints{at}, got {shape!r}")
    if len(shape) > 16 or math.prod(shape) > MAX_NUMEL:
        raise FormatError(f"absurd shape {shape}{at}: more than 16 dims or 2^40 elements")
    bs = h.get("block_size")
    if not isinstance(bs, int) or isinstance(bs, bool) or not (MIN_BLOCK <= bs <= MAX_BLOCK) or bs % 64:
        raise FormatError(f"block_size must be a multiple of 64 in [{MIN_BLOCK}, {MAX_BLOCK}]{at}, got {bs!r}")
    checksum = h.get("checksum")
    if not isinstance(checksum, str) or not _HEX16.fullmatch(checksum):
        raise FormatError(f"checksum must be 16 hex digits{at}, got {checksum!r}")


_HEX16 = re.compile("[0-9a-fA-F]{16}")
_UINT8, _INT64 = np.dtype(np.uint8), np.dtype(np.int64)
_NO_DATA = np.zeros(0, np.uint8)
_NOT_COVERED, _SHORT_BLOCK, _MODE4_IN_V1 = 1, 2, 3


@njit(cache=True, nogil=True)
def _index_fault(idx: np.ndarray, n_data: int, min_block: int, data: np.ndarray, v1: bool) -> int:
    """0, or why the block index cannot describe ``n_data`` bytes of blocks (one pass, no allocation):
    not starting at 0 / not ending at ``n_data`` / decreasing, a block under ``min_block`` bytes, or
    (``v1``) a block of a version-1 stream starting with a mode-4 section."""
    n = idx.shape[0]
    if idx[0] != 0 or idx[n - 1] != n_data:
        return _NOT_COVERED
    short = False
    for b in range(n - 1):
        size = idx[b + 1] - idx[b]
        if size < 0:
            return _NOT_COVERED
        if size < min_block:
            short = True
    if short:
        return _SHORT_BLOCK
    if v1:
        for b in range(n - 1):
            if idx[b + 1] > idx[b] and data[idx[b]] == MODE_RANS_CTX:
                return _MODE4_IN_V1
    return 0


def format_version(coder: str) -> int:
    """The version an encoder writes for ``coder``: 2 for ``rans-ctx`` (mode-4 sections), else 1."""
    return 2 if coder in VERSION_2_CODERS else 1


def _host_copy(arr: Any) -> np.ndarray:
    """A host numpy copy of a device array (numba device array or torch tensor)."""
    if hasattr(arr, "copy_to_host"):
        return arr.copy_to_host()
    return arr.detach().cpu().numpy()


def _as_numpy(arr: Any, dtype: type, what: str, name: str | None) -> np.ndarray:
    if hasattr(arr, "detach"):  # torch tensor, any device
        arr = arr.detach().cpu()
        if str(arr.dtype) != f"torch.{np.dtype(dtype).name}":
            raise FormatError(f"{what} array must be {np.dtype(dtype).name}, got {arr.dtype}{where(name)}")
        arr = arr.contiguous().numpy()
    arr = np.asarray(arr)
    if arr.dtype != dtype:
        raise FormatError(f"{what} array must be {np.dtype(dtype).name}, got {arr.dtype}{where(name)}")
    return np.ascontiguousarray(arr.reshape(-1))
