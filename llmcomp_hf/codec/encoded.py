"""The encoded-tensor container: a JSON-serialisable header plus two flat numpy arrays.

See docs/format.md, part 1. Validation here runs before any kernel touches the arrays.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from llmcomp_hf.coders import CODERS as _REGISTRY
from llmcomp_hf.coders import NAMES, context_modes_allowed, forbidden_mask
from llmcomp_hf.errors import CorruptStreamError, FormatError, shown, where

FORMAT_NAME = "llmcomp.tensor"
# Versions (docs/format.md part 1): 1, section modes 0-3; 2, adds mode 4 (rANS with context, coder
# rans-ctx only); 3, what most encoders write: the checksum also binds dtype, shape and byte length
# (``header_key``), and context modes are allowed for their own coder only; 4, adds mode 5 (rANS
# with scale context, coder rans-scale). Each coder's version is in the registry (llmcomp_hf/coders.py).
FORMAT_VERSION = 3
FORMAT_VERSIONS = (1, 2, 3, 4)  # what decoders read
BINDING_VERSION = 3  # the first version whose checksum binds the header
MODE_RANS_CTX = 4
CODERS = NAMES
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
                             self.data if on_host else _NO_DATA, forbidden(h) if on_host else 0)
        if fault == _NOT_COVERED:
            raise CorruptStreamError(
                f"block index does not rise from 0 to the data's {self.data.shape[0]} bytes (it ends at {int(idx[-1])}){at}; "
                "the file is truncated or corrupted: re-download or re-compress it"
            )
        if fault == _SHORT_BLOCK:  # every plane section takes >= 2 bytes: rejected before allocating the output
            raise CorruptStreamError(
                f"a block is shorter than the {2 * DTYPES[h['dtype']][1]} bytes any block needs{at}; "
                "the file is truncated or corrupted: re-download or re-compress it"
            )
        if fault == _MODE4_IN_V1:
            raise CorruptStreamError(
                f"a stream of version {version}, coder {h['coder']!r} holds a context section (mode-4 or mode-5) it "
                f"does not allow{at}; the file is "
                "corrupted: re-download or re-compress it"
            )


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's parser takes NaN/Infinity; strict ones (safetensors') do not


def load_json_object(raw: bytes | str, what: str, at: str) -> dict[str, Any]:
    """Parse stored JSON (UTF-8 bytes or text) that must be an object; FormatError otherwise.

    ``what`` names the object in the message, ``at`` is a ``where(...)`` suffix. Invalid UTF-8,
    invalid JSON (``NaN``/``Infinity`` too, as safetensors refuses them), numbers Python refuses and nesting deep enough to exhaust the recursion limit are
    all reported as damage, never as the parser's own exception types.
    """
    try:
        obj = json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw,
                         parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise FormatError(f"{what} is not valid UTF-8 JSON{at}: {reason}. The file is damaged: re-download "
                          "it or re-compress the model.") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{what} must be a JSON object{at}, got {type(obj).__name__}. The file is damaged: "
                          "re-download it or re-compress the model.")
    return obj


def is_checksum(value: Any) -> bool:
    """Whether ``value`` is a checksum as stored: a string of exactly 16 hex digits."""
    return isinstance(value, str) and _HEX16.fullmatch(value) is not None


def validate_header(h: Any, name: str | None = None) -> None:
    """Check an encoded-tensor header alone (docs/format.md part 1); FormatError naming ``name``.

    The one check of the header object: ``EncodedTensor.validate`` and every reader that looks at a
    header before the arrays (``llmcomp_hf.format.check_declared``) call it.
    """
    at = where(name)
    if not isinstance(h, dict) or h.get("format") != FORMAT_NAME:
        fmt = h.get("format") if isinstance(h, dict) else h
        raise FormatError(f"not an llmcomp encoded tensor{at}: header format is {shown(fmt)}")
    version = h.get("version")
    if type(version) is not int or version not in FORMAT_VERSIONS:
        raise FormatError(
            f"unsupported llmcomp format version {shown(version)}{at}; this llmcomp-hf reads versions "
            f"{', '.join(map(str, FORMAT_VERSIONS))}. Upgrade llmcomp-hf (pip install -U llmcomp-hf) or re-compress the model."
        )
    if not isinstance(h.get("dtype"), str) or h["dtype"] not in DTYPES:
        raise FormatError(f"unsupported dtype {shown(h.get('dtype'))}{at}; known: {sorted(DTYPES)}")
    if not isinstance(h.get("coder"), str) or h["coder"] not in CODERS:
        raise FormatError(f"unknown coder {shown(h.get('coder'))}{at}; known: {list(CODERS)}")
    if version < min_version(h["coder"]):
        raise FormatError(f"coder {shown(h['coder'])} needs format version {min_version(h['coder'])}{at}, header says {version}")
    shape = h.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise FormatError(f"shape must be a list of non-negative ints{at}, got {shown(shape)}")
    if len(shape) > 16 or math.prod(shape) > MAX_NUMEL:
        raise FormatError(f"absurd shape {shown(shape)}{at}: more than 16 dims or 2^40 elements")
    bs = h.get("block_size")
    if not isinstance(bs, int) or isinstance(bs, bool) or not (MIN_BLOCK <= bs <= MAX_BLOCK) or bs % 64:
        raise FormatError(f"block_size must be a multiple of 64 in [{MIN_BLOCK}, {MAX_BLOCK}]{at}, got {shown(bs)}")
    checksum = h.get("checksum")
    if not is_checksum(checksum):
        raise FormatError(f"checksum must be 16 hex digits{at}, got {shown(checksum)}")


_HEX16 = re.compile("[0-9a-fA-F]{16}")
_UINT8, _INT64 = np.dtype(np.uint8), np.dtype(np.int64)
_HEX = frozenset("0123456789abcdefABCDEF")
_NO_DATA = np.zeros(0, np.uint8)
_NOT_COVERED, _SHORT_BLOCK, _MODE4_IN_V1 = 1, 2, 3


@njit(cache=True, nogil=True)
def _index_fault(idx: np.ndarray, n_data: int, min_block: int, data: np.ndarray, forbid: int) -> int:
    """0, or why the block index cannot describe ``n_data`` bytes of blocks (one pass, no allocation):
    not starting at 0 / not ending at ``n_data`` / decreasing, a block under ``min_block`` bytes, or
    a block starting with a context section of a mode ``m`` the header forbids (bit ``m`` of
    ``forbid``, ``forbidden``)."""
    n = idx.shape[0]
    if idx[0] != 0 or idx[n - 1] != n_data:
        return _NOT_COVERED
    short = False
    for b in range(n - 1):
        if idx[b + 1] < idx[b]:  # compared, not subtracted: a difference of crafted entries can overflow int64
            return _NOT_COVERED
        if idx[b + 1] - idx[b] < min_block:  # both in [0, n_data] now: no overflow
            short = True
    if short:
        return _SHORT_BLOCK
    if forbid:
        for b in range(n - 1):
            if idx[b + 1] > idx[b] and data[idx[b]] < 8 and (forbid >> data[idx[b]]) & 1:
                return _MODE4_IN_V1
    return 0


def format_version(coder: str) -> int:
    """The version an encoder writes for ``coder`` (the registry's; 3, or 4 for ``rans-scale``)."""
    return _REGISTRY[coder].version


def min_version(coder: str) -> int:
    """The oldest version a stream of ``coder`` may have: 2 for ``rans-ctx``, 4 for ``rans-scale``, else 1."""
    return _REGISTRY[coder].min_version


def mode4_allowed(header: dict[str, Any]) -> bool:
    """Whether a (validated) header allows mode-4 sections: version 2, or 3+ with coder ``rans-ctx``."""
    return MODE_RANS_CTX in context_modes_allowed(header["version"], header["coder"])


def context_allowed(header: dict[str, Any]) -> bool:
    """Whether a (validated) header allows any context section (mode 4 or 5): the CUDA decoder has none."""
    return bool(context_modes_allowed(header["version"], header["coder"]))


def forbidden(header: dict[str, Any]) -> int:
    """Bit mask of the context modes a (validated) header forbids (for the kernels)."""
    return forbidden_mask(header["version"], header["coder"])


def header_key(header: dict[str, Any]) -> int:
    """The term a version-3 checksum adds to the sum32 of the bytes; 0 for versions 1 and 2.

    BLAKE2b (8-byte digest, read little-endian) of the UTF-8 text
    ``llmcomp.tensor;dtype=<dtype>;shape=<d0,d1,...>;nbytes=<numel * itemsize>``: a swapped dtype,
    an edited shape or a changed byte length no longer verifies. The tensor name is not bound
    (transformers renames keys on load).
    """
    if header["version"] < BINDING_VERSION:
        return 0
    shape = [int(d) for d in header["shape"]]
    return binding_term(header["dtype"], shape, math.prod(shape) * DTYPES[header["dtype"]][0])


def binding_term(dtype: str, shape: list[int], nbytes: int) -> int:
    """``header_key`` of a tensor of any dtype name (plain tensors too, whose dtype the codec may not know)."""
    text = f"llmcomp.tensor;dtype={dtype};shape={','.join(str(int(d)) for d in shape)};nbytes={int(nbytes)}"
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def checksum_of(header: dict[str, Any], data_sum: int) -> str:
    """The ``checksum`` field (16 hex digits) of a tensor whose bytes have sum32 ``data_sum``.

    Encoders write it; decoders compare it with the header's (``expected_sum`` is the inverse).
    """
    return f"{(int(data_sum) + header_key(header)) % (1 << 64):016x}"


def expected_sum(header: dict[str, Any]) -> int:
    """The sum32 the decoded bytes must have for the header's ``checksum`` to verify."""
    return (int(header["checksum"], 16) - header_key(header)) % (1 << 64)


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
