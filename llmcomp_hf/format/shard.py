"""Part 2 of the on-disk format: how an encoded tensor is stored inside ordinary safetensors shards.

A compressed parameter ``X.weight`` becomes three standard tensors (see docs/format.md, part 2)::

    X.weight.llmcomp_data    uint8  [n_bytes]       the encoded blocks
    X.weight.llmcomp_index   int64  [n_blocks + 1]  block byte offsets
    X.weight.llmcomp_header  uint8  [n_json]        the encoded-tensor header, compact UTF-8 JSON

A lossy weight (part 3) stores each transform tensor ``<part>`` that way under ``X.weight.<part>``, plus
``X.weight.llmcomp_transform`` (uint8 JSON, see ``llmcomp_hf.format.lossy``).

Every shard also carries ``SHARD_METADATA`` in its safetensors ``__metadata__``, and one
``llmcomp.plain.<key>`` checksum per plain tensor (``plain_checksums``; transformers writes the same
metadata dict into every shard, so entries are per tensor, and a shard checks those of its tensors).
This module only maps names and bytes; it never imports transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from llmcomp_hf.codec import EncodedTensor
from llmcomp_hf.codec.checksum import sum32
from llmcomp_hf.codec.encoded import binding_term, is_checksum, load_json_object, validate_header
from llmcomp_hf.errors import ChecksumMismatchError, FormatError, where

SHARD_FORMAT = "llmcomp.shard"
SHARD_VERSION = 1
META_FORMAT_KEY = "llmcomp.format"
META_VERSION_KEY = "llmcomp.version"
SHARD_METADATA: dict[str, str] = {META_FORMAT_KEY: SHARD_FORMAT, META_VERSION_KEY: str(SHARD_VERSION)}

#: metadata key prefix of a plain tensor's checksum: ``llmcomp.plain.<key>`` -> 16 hex digits
PLAIN_PREFIX = "llmcomp.plain."

PARTS = ("data", "index", "header")
SUFFIXES: dict[str, str] = {part: f"llmcomp_{part}" for part in PARTS}
MAX_HEADER_BYTES = 1 << 16
#: last segment of the key holding a lossy weight's transform header (docs/format.md part 3)
TRANSFORM_SUFFIX = "llmcomp_transform"


def part_key(name: str, part: str) -> str:
    """Checkpoint key of one part (``data``/``index``/``header``) of compressed tensor ``name``."""
    return f"{name}.{SUFFIXES[part]}"


def split_key(key: str) -> tuple[str, str | None]:
    """``("X.weight", "data")`` for ``"X.weight.llmcomp_data"``; ``(key, None)`` for a plain key."""
    base, _, last = key.rpartition(".")
    for part, suffix in SUFFIXES.items():
        if last == suffix and base:
            return base, part
    return key, None


def transform_key(name: str) -> str:
    """Checkpoint key of the transform header of lossy weight ``name`` (``X.weight.llmcomp_transform``)."""
    return f"{name}.{TRANSFORM_SUFFIX}"


def transform_base(key: str) -> str | None:
    """``"X.weight"`` for ``"X.weight.llmcomp_transform"``; None for every other key.

    :func:`split_key` treats a transform key as plain, so lossless tools see it as an ordinary tensor.
    """
    base, _, last = key.rpartition(".")
    return base if last == TRANSFORM_SUFFIX and base else None


def pack(name: str, enc: EncodedTensor) -> dict[str, torch.Tensor]:
    """The three checkpoint tensors of ``enc``, keyed by their names (arrays are shared, not copied)."""
    header = np.frombuffer(enc.header_json().encode("utf-8"), dtype=np.uint8).copy()
    return {
        part_key(name, "data"): torch.from_numpy(enc.data),
        part_key(name, "index"): torch.from_numpy(enc.index),
        part_key(name, "header"): torch.from_numpy(header),
    }


def unpack(name: str, parts: Mapping[str, Any], file: str | None = None) -> EncodedTensor:
    """Rebuild and validate the EncodedTensor ``name`` from its ``{"data", "index", "header"}`` tensors.

    Raises FormatError (or CorruptStreamError) naming the tensor and file when a part is missing,
    has the wrong dtype or the header is not valid llmcomp JSON.
    """
    missing = [part_key(name, p) for p in PARTS if parts.get(p) is None]
    if missing:
        raise FormatError(
            f"compressed tensor is incomplete: missing {missing}{where(name, file)}. A shard is missing or "
            "truncated: re-download the checkpoint or re-save it with llmcomp-hf."
        )
    header = read_tensor_header(name, parts["header"], file)
    try:
        return EncodedTensor.from_parts(header, parts["data"], parts["index"], name=name)
    except FormatError as exc:
        raise with_file(exc, name, file) from exc


def read_tensor_header(name: str, tensor: Any, file: str | None = None, validate: bool = True) -> dict[str, Any]:
    """Parse and validate the ``X.weight.llmcomp_header`` tensor alone (no data or index needed).

    The one reader of a stored encoded-tensor header (``unpack``, ``check_declared``); raises
    FormatError naming the tensor and file. ``validate=False`` checks the tensor and its JSON only, for
    a caller that validates the fields next (``EncodedTensor.validate``).
    """
    header = parse_json_tensor(tensor, part_key(name, "header"), MAX_HEADER_BYTES, where(name, file))
    if not validate:
        return header
    try:
        validate_header(header, name)
    except FormatError as exc:
        raise with_file(exc, name, file) from None
    return header


def parse_json_tensor(tensor: Any, key: str, max_bytes: int, at: str) -> dict[str, Any]:
    """The JSON object stored in a 1-D uint8 tensor of at most ``max_bytes`` (a header part)."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8 or tensor.dim() != 1 or tensor.numel() > max_bytes:
        raise FormatError(
            f"{key} must be 1-D uint8 JSON of at most {max_bytes} bytes, got "
            f"{getattr(tensor, 'dtype', type(tensor).__name__)} {list(getattr(tensor, 'shape', []))}{at}; the shard "
            "is corrupted: re-download it."
        )
    return load_json_object(tensor.detach().cpu().contiguous().numpy().tobytes(), key, at)


def with_file(exc: FormatError, name: str, file: str | None) -> FormatError:
    """The same error with the shard named next to the tensor: ``(tensor 'X' in file 'F')``."""
    if file is None:
        return exc
    text = str(exc)
    tagged = text.replace(where(name), where(name, file), 1)
    return type(exc)(tagged if tagged != text else f"{text}{where(None, file)}")


def check_metadata(metadata: Mapping[str, str] | None, file: str) -> None:
    """Reject a shard whose llmcomp shard metadata names another format or version.

    A shard without llmcomp metadata is accepted (tools that re-shard may drop ``__metadata__``;
    every compressed tensor still carries its own versioned header).
    """
    metadata = metadata or {}
    fmt, version = metadata.get(META_FORMAT_KEY), metadata.get(META_VERSION_KEY)
    if fmt is None and version is None:
        return
    if fmt != SHARD_FORMAT:
        raise FormatError(f"shard metadata {META_FORMAT_KEY}={fmt!r} is not {SHARD_FORMAT!r}{where(None, file)}")
    if version != str(SHARD_VERSION):
        raise FormatError(
            f"unsupported llmcomp shard format version {version!r}{where(None, file)}; this llmcomp-hf reads "
            f"version {SHARD_VERSION}. Upgrade llmcomp-hf (pip install -U llmcomp-hf) or re-compress the model."
        )


def plain_checksum(tensor: torch.Tensor) -> str:
    """A plain tensor's checksum: what a version-3 encoded header of the same tensor would hold
    (sum32 of its bytes plus the term binding dtype, shape and byte length; docs/format.md part 1)."""
    t = tensor.detach().cpu().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
    return raw_checksum(raw, str(t.dtype).removeprefix("torch."), list(t.shape))


def raw_checksum(raw: np.ndarray, dtype: str, shape: list[int]) -> str:
    """``plain_checksum`` of a tensor given as its raw bytes (uint8), torch dtype name and shape."""
    term = binding_term(dtype, shape, raw.size)
    return f"{(sum32(raw) + term) % (1 << 64):016x}"


def plain_checksums(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{"llmcomp.plain.<key>": checksum}`` for every plain tensor of a state dict (compressed parts
    skipped), for the shards' ``__metadata__``. Writers add it to the metadata of every shard.

    A tensor on the ``meta`` device (offloaded, no data here) gets no entry: load it first to cover it.
    """
    return {PLAIN_PREFIX + key: plain_checksum(t) for key, t in tensors.items()
            if split_key(key)[1] is None and t.device.type != "meta"}


def check_plain(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None, file: str | None = None) -> int:
    """Check every plain tensor of ``tensors`` that has a ``llmcomp.plain.<key>`` entry in ``metadata``.

    Entries of tensors not in ``tensors`` (another shard's) are ignored, tensors without an entry (an
    older or re-sharded checkpoint) are not checked. Returns how many were checked; raises
    ChecksumMismatchError (FormatError for a malformed entry) naming the tensor and file.
    """
    metadata = metadata or {}
    checked = 0
    for key, tensor in tensors.items():
        want = metadata.get(PLAIN_PREFIX + key)
        if want is None or split_key(key)[1] is not None:
            continue
        if not is_checksum(want):
            raise FormatError(f"metadata entry {PLAIN_PREFIX + key!r} is not 16 hex digits{where(key, file)}; "
                              "the shard is damaged: re-download it")
        got = plain_checksum(tensor)
        if got != want.lower():
            raise ChecksumMismatchError(
                f"checksum mismatch{where(key, file)}: the stored bytes hash to {got}, expected {want.lower()}. "
                "The shard is corrupted: re-download it or re-save the model.")
        checked += 1
    return checked


def check_plain_file(file: str) -> int:
    """``check_plain`` over one safetensors shard file (its metadata and its plain tensors)."""
    from llmcomp_hf.format.safetensors_file import SafetensorsFile

    with SafetensorsFile(file) as handle:
        metadata = handle.metadata()
        keys = [k for k in handle.keys() if PLAIN_PREFIX + k in metadata and split_key(k)[1] is None]
        return check_plain({k: handle.get_tensor(k) for k in keys}, metadata, file)
