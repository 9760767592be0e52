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

from llmcomp_hf._register import install as _install

_install()  # registers quant_method "llmcomp" once transformers imports its quantizer registry


from llmcomp_hf.loading import load_options


def __getattr__(name: str):  # lazy: the configs import transformers (~2 s), the modules torch
    if name in ("LosslessConfig", "CompressionConfig"):
        from llmcomp_hf import config

        return getattr(config, name)
    if name == "calibrate":
        from llmcomp_hf.calibration import calibrate

        return calibrate
    if name == "lora_for_compressed":  # imports peft
        from llmcomp_hf._peft import lora_for_compressed

        return lora_for_compressed
    if name == "keep_compressed":
        from llmcomp_hf.module_swap import keep_compressed

        return keep_compressed
    raise AttributeError(f"module 'llmcomp_hf' has no attribute {name!r}")


__all__ = [
    "ChecksumMismatchError",
    "CompressionConfig",
    "CorruptStreamError",
    "FormatError",
    "LlmcompError",
    "LosslessConfig",
    "__version__",
    "calibrate",
    "keep_compressed",
    "load_options",
    "lora_for_compressed",
]
