"""Exception types shared by every layer of llmcomp-hf."""

from __future__ import annotations


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
