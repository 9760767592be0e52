"""Reading checkpoints lazily: shard lists, per-tensor dtype/shape from headers, one tensor at a time.

Shards are opened with ``format.safetensors_file.SafetensorsFile`` (the package's one reader): each
``get_tensor`` is a fresh buffer read with ``pread`` and freed when dropped, whereas a memory map keeps
every page touched so far resident until the file is closed (a whole shard's worth of RSS).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmcomp_hf.errors import FormatError, LlmcompError
from llmcomp_hf.format.safetensors_file import SafetensorsFile
from llmcomp_hf.paths import confine, index_shards, read_json, single_shard

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointError(LlmcompError):
    """The input or output folder cannot be used as asked (missing, wrong kind, would be overwritten)."""


class VerificationError(LlmcompError):
    """A written checkpoint does not reproduce its source bit for bit."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a shard, from the header only."""

    name: str
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class ShardInfo:
    """A shard file: its name relative to the checkpoint folder, metadata and tensors in file order."""

    path: Path
    rel: str
    metadata: dict[str, str]
    tensors: list[TensorInfo] = field(default_factory=list)


def with_variant(name: str, variant: str | None) -> str:
    """transformers' file name of a ``variant=`` save: ``model.safetensors`` -> ``model.<variant>.safetensors``."""
    if not variant:
        return name
    stem, _, ext = name.rpartition(".")
    return f"{stem}.{variant}.{ext}"


def shard_files(folder: Path, variant: str | None = None) -> tuple[list[Path], bool]:
    """(shard paths, sharded?) of a checkpoint folder: via its index, else ``model.safetensors``
    (the names of ``save_pretrained(variant=...)`` with ``variant``)."""
    index_name, single_name = with_variant(INDEX_NAME, variant), with_variant(SINGLE_NAME, variant)
    single = single_shard(folder, single_name)  # transformers' precedence: the single file, else the index
    if single is not None:
        return [single], False
    if os.path.lexists(folder / index_name):
        return index_shards(folder, index_name), True
    others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.safetensors"))
    hint = (
        f"; found {others[:3]}: convert to safetensors first (load with transformers and save_pretrained)"
        if others else ""
    )
    raise CheckpointError(f"no {single_name} or {index_name} in {os.fspath(folder)!r}{hint}")


@contextmanager
def open_shard(path: Path | str) -> Iterator[SafetensorsFile]:
    """A shard opened for reading tensors one at a time (regular files only, header checked)."""
    with SafetensorsFile(path) as handle:
        yield handle


def read_shard(path: Path, folder: Path) -> ShardInfo:
    """Header of one shard: metadata and every tensor's dtype and shape, in file order."""
    with SafetensorsFile(path) as h:
        tensors = [TensorInfo(key, h.entry(key).dtype, h.entry(key).shape) for key in h.keys()]
        return ShardInfo(path, path.relative_to(folder).as_posix(), dict(h.metadata()), tensors)


def read_checkpoint(folder: Path, variant: str | None = None) -> tuple[list[ShardInfo], bool]:
    """Headers of every shard of a checkpoint folder, and whether it is sharded (has an index)."""
    if not folder.is_dir():
        raise CheckpointError(f"{os.fspath(folder)!r} is not a folder")
    from llmcomp_hf.format.inventory import check_keys, check_plain_listed  # the loaders' key-set rules

    files, sharded = shard_files(folder, variant)
    shards = [read_shard(f, folder) for f in files]
    check_keys((os.fspath(s.path), (t.name for t in s.tensors)) for s in shards)
    check_plain_listed((os.fspath(s.path), [t.name for t in s.tensors], s.metadata) for s in shards)
    return shards, sharded


def read_config(folder: Path) -> dict[str, Any] | None:
    """``config.json`` of a folder as a dict, or None when there is none."""
    path = folder / CONFIG_NAME
    if not os.path.lexists(path):
        return None
    data = read_json(confine(folder, CONFIG_NAME), "config.json")
    if not isinstance(data, dict):
        raise FormatError(f"{os.fspath(path)!r} must hold a JSON object; restore it")
    return data


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def tensor_bytes(tensor: Any) -> Any:
    """The raw little-endian bytes of a CPU torch tensor as a flat uint8 numpy array (no copy).

    A numpy array (raw bytes already) is returned flattened to uint8.
    """
    import numpy as np
    import torch

    if isinstance(tensor, np.ndarray):
        return tensor.reshape(-1).view(np.uint8)
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy()
