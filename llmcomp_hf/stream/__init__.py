"""Streaming (bounded-memory) compression, decompression, inspection and verification of checkpoints.

    from llmcomp_hf.stream import compress_checkpoint, decompress_checkpoint
    compress_checkpoint("plain-model/", "compressed-model/", LosslessConfig(), workers=2, verify=True)

Memory stays at a few tensors whatever the checkpoint size; outputs appear atomically.
Submodules import torch and numba lazily, so importing this package is cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointError",
    "Report",
    "RunResult",
    "VerificationError",
    "compress_checkpoint",
    "decompress_checkpoint",
    "inspect_checkpoint",
    "is_selected",
    "stats_from_checkpoint",
    "verify_checkpoint",
]

_WHERE = {
    "CheckpointError": "source",
    "VerificationError": "source",
    "RunResult": "records",
    "compress_checkpoint": "compress",
    "decompress_checkpoint": "compress",
    "is_selected": "compress",
    "Report": "check",
    "inspect_checkpoint": "check",
    "stats_from_checkpoint": "check",
    "verify_checkpoint": "check",
    "restore_card": "check",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'llmcomp_hf.stream' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"llmcomp_hf.stream.{_WHERE[name]}"), name)
