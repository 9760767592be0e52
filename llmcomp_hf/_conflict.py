"""A clear error when ``from_pretrained`` of an llmcomp checkpoint is given another quantization config.

transformers 5.x (``AutoHfQuantizer.merge_quantization_configs``) refuses a ``quantization_config=``
argument whose class differs from the checkpoint's with a generic ``ValueError`` ("The model is
quantized with LosslessConfig but you are passing a BitsAndBytesConfig config...") that does not say
how to get there. It builds the checkpoint's config with ``CompressionConfig.from_dict`` just before
that check, so ``from_dict`` asks :func:`requested_config` what the caller passed and raises
:func:`conflict_error` instead, on exactly the condition transformers would refuse.

The one transformers internal read here: the name of that method and of its argument
``quantization_config_from_args`` (read, never changed). When they change, the lookup finds nothing
and transformers' own error stands; ``tests/integration/test_conflict.py`` notices.
"""

from __future__ import annotations

import sys
from typing import Any

from llmcomp_hf.errors import LlmcompError

_MERGE = "merge_quantization_configs"
_ARG = "quantization_config_from_args"
_DEPTH = 6  # from_dict <- AutoQuantizationConfig.from_dict <- merge_quantization_configs, with slack


class QuantizationConflictError(LlmcompError, ValueError):
    """An llmcomp checkpoint was loaded with another quantization method's config."""


def requested_config() -> Any | None:
    """The ``quantization_config=`` that ``from_pretrained`` is merging with the checkpoint's, if any."""
    frame = sys._getframe(1)
    for _ in range(_DEPTH):
        if frame is None:
            return None
        if frame.f_code.co_name == _MERGE:
            return frame.f_locals.get(_ARG)
        frame = frame.f_back
    return None


def conflict_error(stored: Any, requested: Any) -> QuantizationConflictError | None:
    """The error to raise when transformers would refuse ``requested`` for a checkpoint holding ``stored``."""
    if requested is None or type(requested).__name__ == type(stored).__name__:
        return None
    from llmcomp_hf.config import CompressionConfig

    ours, theirs = type(stored).__name__, type(requested).__name__
    if isinstance(requested, dict):
        theirs = f"quantization_config dict (quant_method {requested.get('quant_method')!r})"
    head = (f"this checkpoint is already compressed by llmcomp-hf ({ours}, quant_method 'llmcomp'), so "
            f"from_pretrained cannot apply a {theirs} to it")
    if isinstance(requested, CompressionConfig):
        return QuantizationConflictError(
            f"{head}: load it without quantization_config (its own config is used), or run `llmcomp decompress "
            "SRC DST` and compress DST with the new config"
        )
    return QuantizationConflictError(
        f"{head}. To quantize it: run `llmcomp decompress SRC DST` (plain safetensors) and load DST with your "
        "quantization_config; or load it without quantization_config, call model.dequantize(), "
        "model.save_pretrained(DST) and load DST with your config"
    )
