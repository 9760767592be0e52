"""Parts 2 and 3 of the llmcomp format: encoded (and lossy) tensors as standard safetensors tensors (docs/format.md)."""

from __future__ import annotations

from llmcomp_hf.format.declared import check_declared
from llmcomp_hf.format.reader import checkpoint_files, decode_tensors, load_checkpoint, shard_keys
from llmcomp_hf.format.lossy import LossyWeight, compress_lossy, decode_lossy
from llmcomp_hf.format.shard import (
    PLAIN_PREFIX,
    SHARD_METADATA,
    SHARD_VERSION,
    check_plain,
    check_plain_file,
    pack,
    part_key,
    plain_checksums,
    split_key,
    transform_base,
    transform_key,
    unpack,
)

__all__ = [
    "PLAIN_PREFIX",
    "SHARD_METADATA",
    "SHARD_VERSION",
    "LossyWeight",
    "check_declared",
    "check_plain",
    "check_plain_file",
    "compress_lossy",
    "decode_lossy",
    "checkpoint_files",
    "decode_tensors",
    "load_checkpoint",
    "pack",
    "part_key",
    "plain_checksums",
    "shard_keys",
    "split_key",
    "transform_base",
    "transform_key",
    "unpack",
]
