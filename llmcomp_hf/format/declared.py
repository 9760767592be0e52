"""Compare what a stored weight declares with the parameter it is loaded into, before decoding it.

A few bytes of constant blocks (or of low-rank factors) can declare gigabytes; a loader that knows
the parameter's shape calls :func:`check_declared` on the stored header first, so a damaged or
hostile checkpoint is refused before any memory is allocated for it (docs/format.md, "Limits").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from llmcomp_hf.codec.encoded import validate_header
from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.format.lossy import MAX_TRANSFORM_BYTES, TRANSFORM_FORMAT, validate_transform_header
from llmcomp_hf.format.shard import parse_json_tensor, read_tensor_header, with_file


def check_declared(
    name: str,
    header: torch.Tensor | Mapping[str, Any],
    expected_shape: Sequence[int],
    expected_dtype: torch.dtype | None = None,
    file: str | None = None,
) -> None:
    """Raise FormatError unless stored weight ``name`` declares ``expected_shape`` (and ``expected_dtype``).

    Args:
        name: the weight's checkpoint name (``X.weight``), for messages.
        header: its ``X.weight.llmcomp_header`` tensor (lossless) or ``X.weight.llmcomp_transform``
            tensor (lossy), as read from the shard, or either header already parsed to a dict.
        expected_shape: the parameter's shape (``torch.Size`` or any sequence of ints).
        expected_dtype: the parameter's dtype, or None when the load casts anyway (``dtype=``).
        file: the shard, for messages.

    The header itself is validated first, by the same function every reader uses.
    """
    at = where(name, file)
    if isinstance(header, torch.Tensor):
        parsed = parse_json_tensor(header, f"header of {name}", MAX_TRANSFORM_BYTES, at)
        if parsed.get("format") != TRANSFORM_FORMAT:
            parsed = read_tensor_header(name, header, file)  # the encoded-tensor header's own size limit
    elif isinstance(header, Mapping):
        parsed = dict(header)
    else:
        raise FormatError(f"a stored header must be a uint8 tensor or a dict, got {type(header).__name__}{at}")
    if parsed.get("format") == TRANSFORM_FORMAT:
        validate_transform_header(parsed, name, file)
    else:
        try:
            validate_header(parsed, name)
        except FormatError as exc:
            raise with_file(exc, name, file) from None
    shape, want = list(parsed["shape"]), [int(d) for d in expected_shape]
    if shape != want:
        raise FormatError(
            f"stored weight declares shape {shape} where the model expects {want}{at}. The checkpoint does "
            "not belong to this model (config.json changed?) or is damaged: re-download it or re-compress the model."
        )
    if expected_dtype is not None and parsed["dtype"] != str(expected_dtype).removeprefix("torch."):
        raise FormatError(
            f"stored weight declares dtype {parsed['dtype']} where the model expects "
            f"{str(expected_dtype).removeprefix('torch.')}{at}. Load with dtype= to cast, or re-compress the model."
        )


__all__ = ["check_declared"]
