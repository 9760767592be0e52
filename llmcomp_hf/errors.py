"""Exception types shared by every layer of llmcomp-hf."""

from __future__ import annotations

import reprlib
from typing import Any


class LlmcompError(Exception):
    """Base class of every error llmcomp-hf raises on purpose."""


class FormatError(LlmcompError, ValueError):
    """A header, index or shard does not follow the llmcomp format (or has another version)."""


class CorruptStreamError(FormatError):
    """An encoded stream is truncated, corrupted or hostile; decoding stopped before any bad write."""


class ChecksumMismatchError(CorruptStreamError):
    """The decoded bytes do not hash to the checksum recorded at encode time."""


def where(name: str | None = None, file: str | None = None) -> str:
    """Return a ' (tensor X in file Y)' suffix for error messages; empty when nothing is known."""
    parts = []
    if name:
        parts.append(f"tensor {name!r}")
    if file:
        parts.append(f"file {str(file)!r}")
    return f" ({' in '.join(parts)})" if parts else ""


def shown(value: Any) -> str:
    """A short repr of a value read from a file, for messages (bounded in length and nesting)."""
    return reprlib.repr(value)


def corrupt_block(name: str | None, block: int, plane: int, what: str, decoder: str = "") -> CorruptStreamError:
    """The error for a block a decoder rejected; ``decoder`` (e.g. ``" (CUDA decoder)"``) follows ``what``."""
    return CorruptStreamError(
        f"corrupted encoded stream{where(name)}: block {block}, plane {plane}: {what}{decoder}. The file is "
        "damaged or truncated: re-download or re-compress it."
    )


def checksum_mismatch(name: str | None, got: str, expected: str, decoder: str = "") -> ChecksumMismatchError:
    """The error for decoded bytes whose sum32 differs from the header's."""
    return ChecksumMismatchError(
        f"checksum mismatch{where(name)}: decoded {got}, expected {expected}{decoder}. The encoded data is "
        "corrupted: re-download or re-compress it."
    )
