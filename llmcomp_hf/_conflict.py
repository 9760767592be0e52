"""A clear error when ``from_pretrained`` of an llmcomp checkpoint is given another quantization config.

transformers 5.x (``AutoHfQuantizer.merge_quantization_configs``) refuses a ``quantization_config=``
argument whose class differs from the checkpoint's with a generic ``ValueError`` ("The model is
quantized with LosslessConfig but you are passing a BitsAndBytesConfig config...") that does not say
how to get there. It builds the checkpoint's config with ``CompressionConfig.from_dict`` just before
that check, so ``from_dict`` asks ``_hf_compat.quantization_config_being_merged`` what the caller
passed and raises :func:`conflict_error` instead, on exactly the condition transformers would refuse.
"""

from __future__ import annotations

from typing import Any

from llmcomp_hf.errors import LlmcompError

class QuantizationConflictError(LlmcompError, ValueError):
    """An llmcomp checkpoint was loaded with another quantization method's config."""


def conflict_error(stored: Any, requested: Any) -> QuantizationConflictError | None:
    """The error to raise when transformers would refuse ``requested`` for a checkpoint holding ``stored``."""
    if requested is None or type(requested).__name__ == type(stored).__name__:
        return None
    ours, theirs = type(stored).__name__, type(requested).__name__
    if isinstance(requested, dict):
        theirs = f"quantization_config dict (quant_method {requested.get('quant_method')!r})"
    head = (f"this checkpoint is already compressed by llmcomp-hf ({ours}, quant_method 'llmcomp'), so "
            f"from_pretrained cannot apply a {theirs} to it")
    if getattr(requested, "quant_method", None) == getattr(stored, "quant_method", None):  # another llmcomp config
        return QuantizationConflictError(
            f"{head}: load it without quantization_config (its own config is used), or run `llmcomp decompress "
            "SRC DST` and compress DST with the new config"
        )
    return QuantizationConflictError(
        f"{head}. To quantize it: run `llmcomp decompress SRC DST` (plain safetensors) and load DST with your "
        "quantization_config; or load it without quantization_config, call model.dequantize(), "
        "model.save_pretrained(DST) and load DST with your config"
    )
