"""llmcomp-hf: entropy-coded LLM weights behind transformers' ``quantization_config``.

Importing this package is cheap: numba kernels compile on first use (and are cached on disk).
"""

from __future__ import annotations

from llmcomp_hf.errors import (
    ChecksumMismatchError,
    CorruptStreamError,
    FormatError,
    LlmcompError,
)

__version__ = "0.1.0"

__all__ = [
    "ChecksumMismatchError",
    "CorruptStreamError",
    "FormatError",
    "LlmcompError",
    "__version__",
]
