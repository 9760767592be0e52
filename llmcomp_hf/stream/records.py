"""What a compress or decompress run did, tensor by tensor: the records every stream module returns.

The bottom of ``stream/``'s writers (compress, lossy, expand import it; it imports none of them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from llmcomp_hf.format.shard import part_key


@dataclass
class TensorRecord:
    """What happened to one source tensor."""

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    original_bytes: int
    stored_bytes: int
    compressed: bool
    keys: tuple[str, ...] = ()  # its checkpoint tensors when not the three lossless parts or the name
    lossy: bool = False  # stored with lossy stages (compress) or written as their reconstruction (decompress)
    rel_mse: float | None = None  # lossy: measured ||W - W'||^2 / ||W||^2

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def stored_keys(self) -> tuple[str, ...]:
        """The checkpoint tensors written for this source tensor."""
        if self.keys:
            return self.keys
        return tuple(part_key(self.name, p) for p in ("data", "index", "header")) if self.compressed else (self.name,)


@dataclass
class RunResult:
    """Summary of a compress/decompress run."""

    dst: Path
    records: list[TensorRecord] = field(default_factory=list)
    seconds: float = 0.0
    verified: bool = False

    @property
    def original_bytes(self) -> int:
        return sum(r.original_bytes for r in self.records)

    @property
    def stored_bytes(self) -> int:
        return sum(r.stored_bytes for r in self.records)

    @property
    def ratio(self) -> float:
        return self.stored_bytes / self.original_bytes if self.original_bytes else 1.0

    @property
    def lossy(self) -> bool:
        """True when any weight went through lossy stages."""
        return any(r.lossy for r in self.records)


__all__ = ["RunResult", "TensorRecord"]
