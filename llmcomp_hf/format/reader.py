"""Read llmcomp shards without transformers: open, check and decode a checkpoint to plain tensors."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from llmcomp_hf.codec import decode
from llmcomp_hf.codec.api import MAX_OUTPUT_BYTES
from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.format.inventory import check_keys, check_plain_listed
from llmcomp_hf.format.lossy import claim_parts, decode_lossy
from llmcomp_hf.format.safetensors_file import SafetensorsFile
from llmcomp_hf.format.shard import check_metadata, check_plain, split_key, transform_base, unpack, with_file
from llmcomp_hf.paths import check_link, check_regular, index_shards, link_root, single_shard

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@contextmanager
def _open(file: str | os.PathLike) -> Iterator[SafetensorsFile]:
    """A shard of a checkpoint folder, opened with :class:`SafetensorsFile` (regular files only, header
    checked); a link out of the folder and a missing shard are FormatErrors naming the file."""
    file = os.fspath(file)
    check_link(Path(file), link_root(os.path.dirname(file) or "."))  # also guards files transformers lists
    if not os.path.exists(file):  # e.g. a shard name in a damaged index, which transformers lists as is
        raise FormatError(f"shard file is missing{where(None, file)}; the checkpoint is incomplete or its "
                          "model.safetensors.index.json is damaged: re-download it")
    with SafetensorsFile(file) as handle:
        yield handle


def shard_keys(file: str | os.PathLike) -> tuple[list[str], dict[str, str]]:
    """Tensor names and ``__metadata__`` of one shard (reads the header only), format version checked.

    Raises FormatError naming the file when it is truncated, not safetensors, or of another version.
    """
    with _open(file) as handle:
        keys, metadata = handle.keys(), dict(handle.metadata())
    check_metadata(metadata, os.fspath(file))
    return keys, metadata


def checkpoint_files(path: str | os.PathLike) -> list[str]:
    """The shard files of a checkpoint folder (via its index when sharded), or ``[path]`` for a file.

    Index names are confined to the folder and every file must be a regular file (``llmcomp_hf.paths``).
    """
    path = Path(path)
    if os.path.isfile(path):
        check_regular(path)
        return [os.fspath(path)]
    # transformers' precedence: model.safetensors when there is one, else the index
    single = single_shard(path, SINGLE_NAME) if path.is_dir() else None
    if single is not None:
        return [os.fspath(single)]
    if os.path.lexists(path / INDEX_NAME):
        return [os.fspath(f) for f in index_shards(path, INDEX_NAME)]
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
    by_file: dict[str, list[str]] = {}
    for key in tensors:
        by_file.setdefault(files.get(transform_base(key) or split_key(key)[0], ""), []).append(key)
    check_keys(by_file.items())  # a weight stored two ways
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
        out[name] = decode_parts(name, parts, files.get(name), verify, max_output_bytes=max_output_bytes)
    for name, header in transforms.items():
        file = files.get(name)
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
    listed = [(file, shard_keys(file)) for file in checkpoint_files(path)]
    check_keys((file, keys) for file, (keys, _) in listed)
    check_plain_listed((file, keys, metadata) for file, (keys, metadata) in listed)
    for file, (keys, metadata) in listed:
        with _open(file) as handle:
            shard = {key: handle.get_tensor(key) for key in keys}
        check_plain(shard, metadata, file)
        for key in keys:
            raw[key] = shard[key]
            files.setdefault(transform_base(key) or split_key(key)[0], file)
    return decode_tensors(raw, files, verify, max_output_bytes=max_output_bytes)


__all__ = ["check_keys", "checkpoint_files", "decode_parts", "decode_tensors", "load_checkpoint", "shard_keys"]
