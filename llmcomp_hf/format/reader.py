"""Read llmcomp shards without transformers: open, check and decode a checkpoint to plain tensors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from llmcomp_hf.codec import decode
from llmcomp_hf.codec.api import MAX_OUTPUT_BYTES
from llmcomp_hf.codec.encoded import load_json_object
from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.format.lossy import claim_parts, decode_lossy
from llmcomp_hf.format.shard import check_metadata, check_plain, split_key, transform_base, unpack, with_file

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def shard_keys(file: str | os.PathLike) -> tuple[list[str], dict[str, str]]:
    """Tensor names and ``__metadata__`` of one shard (reads the header only), format version checked.

    Raises FormatError naming the file when it is truncated, not safetensors, or of another version.
    """
    try:
        with safe_open(os.fspath(file), framework="pt") as handle:
            keys, metadata = list(handle.keys()), handle.metadata() or {}
    except SafetensorError as exc:
        raise FormatError(
            f"cannot read safetensors shard{where(None, os.fspath(file))}: {exc}. The file is truncated or "
            "corrupted: re-download it or re-save the model."
        ) from exc
    check_metadata(metadata, os.fspath(file))
    return keys, metadata


def checkpoint_files(path: str | os.PathLike) -> list[str]:
    """The shard files of a checkpoint folder (via its index when sharded), or ``[path]`` for a file."""
    path = Path(path)
    if path.is_file():
        return [os.fspath(path)]
    index = path / INDEX_NAME
    if index.is_file():
        weight_map = load_json_object(index.read_bytes(), INDEX_NAME, where(None, os.fspath(index))).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
            raise FormatError(
                f"{INDEX_NAME} has no weight_map of tensor names to shard file names{where(None, os.fspath(index))}; "
                "the file is damaged: re-download it or re-save the model"
            )
        return [os.fspath(path / name) for name in sorted(set(weight_map.values()))]
    if (path / SINGLE_NAME).is_file():
        return [os.fspath(path / SINGLE_NAME)]
    raise FileNotFoundError(f"no {SINGLE_NAME} or {INDEX_NAME} in {os.fspath(path)!r}")


def decode_tensors(
    tensors: Mapping[str, torch.Tensor], files: Mapping[str, str] | None = None, verify: bool = True,
    *, max_output_bytes: int | None = MAX_OUTPUT_BYTES,
) -> dict[str, torch.Tensor]:
    """Replace every compressed tensor in ``tensors`` by its decoded tensor; plain tensors pass through.

    Lossless triples are decoded bit-exactly; lossy weights (a ``.llmcomp_transform`` key and its
    encoded parts, docs/format.md part 3) are decoded and reconstructed in their original dtype.
    ``files`` maps a compressed tensor's name to its shard, for error messages only.
    ``max_output_bytes`` bounds each decoded tensor (see ``decode_parts``).
    """
    files = files or {}
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    transforms: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        lossy_name = transform_base(key)
        base, part = split_key(key)
        if lossy_name is not None:
            transforms[lossy_name] = tensor
        elif part is None:
            out[key] = tensor
        else:
            groups.setdefault(base, {})[part] = tensor
    lossy_parts = claim_parts(groups, transforms)
    for name, parts in groups.items():
        file = files.get(name)
        if name in out:
            raise FormatError(f"tensor stored both plain and compressed{where(name, file)}; the checkpoint is inconsistent")
        out[name] = decode_parts(name, parts, file, verify, max_output_bytes=max_output_bytes)
    for name, header in transforms.items():
        file = files.get(name)
        if name in out:
            raise FormatError(f"tensor stored both plain and lossy{where(name, file)}; the checkpoint is inconsistent")
        out[name] = decode_lossy(name, header, lossy_parts.get(name, {}), file, verify,
                                 max_output_bytes=max_output_bytes)[0]
    return out


def decode_parts(name: str, parts: Mapping[str, torch.Tensor | None], file: str | None = None, verify: bool = True,
                 *, max_output_bytes: int | None = MAX_OUTPUT_BYTES) -> torch.Tensor:
    """Decode one compressed tensor from its ``{"data", "index", "header"}`` parts; errors name the file.

    ``max_output_bytes``: refuse a tensor declaring more decoded bytes, before allocating (see
    ``llmcomp_hf.codec.decode``; None: no limit).
    """
    enc = unpack(name, parts, file)
    try:
        return decode(enc, verify=verify, max_output_bytes=max_output_bytes)
    except FormatError as exc:
        raise with_file(exc, name, file) from exc


def load_checkpoint(path: str | os.PathLike, verify: bool = True, *,
                    max_output_bytes: int | None = MAX_OUTPUT_BYTES) -> dict[str, torch.Tensor]:
    """Load a whole llmcomp (or plain) safetensors checkpoint, decoded (lossy weights reconstructed), as ``{name: tensor}``.

    The parts of one compressed tensor may lie in different shards; they are gathered first. Plain
    tensors with a checksum in their shard's metadata are checked (``check_plain``).
    """
    raw: dict[str, torch.Tensor] = {}
    files: dict[str, str] = {}
    for file in checkpoint_files(path):
        keys, metadata = shard_keys(file)
        with safe_open(file, framework="pt") as handle:
            shard = {key: handle.get_tensor(key) for key in keys}
        check_plain(shard, metadata, file)
        for key in keys:
            raw[key] = shard[key]
            files.setdefault(transform_base(key) or split_key(key)[0], file)
    return decode_tensors(raw, files, verify, max_output_bytes=max_output_bytes)


__all__ = ["checkpoint_files", "decode_parts", "decode_tensors", "load_checkpoint", "shard_keys"]
