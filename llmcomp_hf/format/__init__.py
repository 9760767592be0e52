"""Parts 2 and 3 of the llmcomp format: encoded (and lossy) tensors as standard safetensors tensors (docs/format.md)."""

from __future__ import annotations

from llmcomp_hf.format.declared import check_declared
from llmcomp_hf.format.reader import checkpoint_files, decode_tensors, load_checkpoint, shard_keys
from llmcomp_hf.format.lossy import LossyWeight, compress_lossy, decode_lossy
from llmcomp_hf.format.shard import (
    SHARD_METADATA,
    SHARD_VERSION,
    pack,
    part_key,
    split_key,
    transform_base,
    transform_key,
    unpack,
)

__all__ = [
    "SHARD_METADATA",
    "SHARD_VERSION",
    "LossyWeight",
    "check_declared",
    "compress_lossy",
    "decode_lossy",
    "checkpoint_files",
    "decode_tensors",
    "load_checkpoint",
    "pack",
    "part_key",
    "shard_keys",
    "split_key",
    "transform_base",
    "transform_key",
    "unpack",
]
