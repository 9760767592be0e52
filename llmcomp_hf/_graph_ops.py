"""Encoded weights inside autograd graphs and ``torch.compile`` graphs.

The compressed layers of ``modules.py`` decode into one scratch buffer that every layer reuses. That
is safe only while nothing keeps the decoded weight beyond the layer's call. Two things would:

* autograd, when the input needs a gradient (LoRA adapters train below the layer): ``F.linear`` would
  save the scratch for its backward, and the next layer overwrites it. ``linear`` and ``addmm`` here are
  an autograd Function that saves no weight and decodes it again in backward (as QLoRA dequantizes
  its 4-bit base in backward), so no decoded weight outlives one layer's forward or backward;
* the compiler, which may reorder a graph: under ``torch.compile`` the weight is decoded by the custom
  op ``llmcomp::decode`` into a fresh tensor (``llmcomp::decode_rows`` for embedding lookups). Their
  fake implementations give the compiler the decoded shape and dtype without decoding; the real ones
  run the same decoder as eager mode, so compiled outputs stay bit-identical.
"""

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from llmcomp_hf.codec import EncodedTensor, decode
from llmcomp_hf.codec.api import decode_rows as decode_rows_of
from llmcomp_hf.codec.encoded import load_json_object
from llmcomp_hf.errors import where

DecodeIntoScratch = Callable[[Any], torch.Tensor]  # EncodedWeight -> its decoded weight in the shared scratch


def weight_outlives_call(x: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """True when autograd or the compiler could keep a layer's decoded weight beyond its call."""
    if torch.compiler.is_compiling():
        return True
    return torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))


def widened(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``w`` in ``x``'s dtype when that is a wider floating type (exact: every value of ``w`` is kept), else ``w``.

    peft's ``prepare_model_for_kbit_training`` casts norms and biases to float32, so float32 activations
    meet bf16/fp16 encoded weights; a plain model it prepared computes with the same weights in float32.
    Other mismatches are left to the matmul to refuse, as a plain layer does.
    """
    if x.dtype == w.dtype or not x.dtype.is_floating_point or torch.promote_types(w.dtype, x.dtype) != x.dtype:
        return w
    return w.to(x.dtype)


def linear(x: torch.Tensor, weight: Any, bias: torch.Tensor | None, decode_into_scratch: DecodeIntoScratch) -> torch.Tensor:
    """``F.linear(x, W, bias)`` with ``W`` the decoded ``weight`` (an EncodedWeight), safe to differentiate."""
    if torch.compiler.is_compiling():
        return F.linear(x, widened(compiled_decode(weight), x), bias)
    return _OnEncoded.apply(x, bias, weight, decode_into_scratch, False)


def addmm(bias: torch.Tensor, x: torch.Tensor, weight: Any, decode_into_scratch: DecodeIntoScratch) -> torch.Tensor:
    """``torch.addmm(bias, x, W)`` (transformers' ``Conv1D``) with ``W`` decoded, safe to differentiate."""
    if torch.compiler.is_compiling():
        return torch.addmm(bias, x, widened(compiled_decode(weight), x))
    return _OnEncoded.apply(x, bias, weight, decode_into_scratch, True)


class _OnEncoded(torch.autograd.Function):
    """``x @ W.T + b`` (Linear) or ``b + x @ W`` (Conv1D) whose backward decodes ``W`` again into the scratch.

    Only the input's and the bias's gradients exist: an encoded weight is frozen. The forward runs the
    op the plain layer runs, and the backward the formulas autograd uses for it, so results and
    gradients are bit-identical to the plain layer's.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bias: torch.Tensor | None, weight: Any,
                decode_into_scratch: DecodeIntoScratch, conv1d: bool) -> torch.Tensor:
        ctx.weight, ctx.decode_into_scratch, ctx.conv1d = weight, decode_into_scratch, conv1d
        ctx.input_shape = x.shape
        w = widened(decode_into_scratch(weight), x)
        return torch.addmm(bias, x, w) if conv1d else F.linear(x, w, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_x = grad_bias = None
        flat = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[0]:
            w = widened(ctx.decode_into_scratch(ctx.weight), grad)  # used at once: the next step may overwrite it
            grad_x = flat.mm(w.t() if ctx.conv1d else w).view(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_bias = flat.sum(0)
        return grad_x, grad_bias, None, None, None


# -- torch.compile --------------------------------------------------------------------------------


def compiled_decode(weight: Any) -> torch.Tensor:
    """``weight`` (an EncodedWeight) decoded by ``llmcomp::decode`` into a fresh tensor (for compiled graphs),
    then cast as the weight was converted (``EncodedWeight.casts``, a plain tuple the compiler guards on)."""
    dtype = weight.decoded_dtype or weight.stored_dtype  # a plain attribute: the compiler guards on it, no re-trace
    return weight.cast(torch.ops.llmcomp.decode(weight.llmcomp_data, weight.llmcomp_index, weight.llmcomp_header,
                                                list(weight.expected_shape), dtype, weight._name or ""))


def embedding(ids: torch.Tensor, weight: Any, padding_idx: int | None) -> torch.Tensor:
    """An embedding lookup of the encoded table ``weight`` inside a compiled graph."""
    if weight.llmcomp_data.device.type != "cpu":
        return F.embedding(ids, compiled_decode(weight), padding_idx)
    dtype = weight.decoded_dtype or weight.stored_dtype
    return weight.cast(torch.ops.llmcomp.decode_rows(weight.llmcomp_data, weight.llmcomp_index, weight.llmcomp_header,
                                                     ids, int(weight.expected_shape[1]), dtype, weight._name or ""))


@functools.lru_cache(maxsize=4096)
def _parsed_header(raw: bytes, name: str) -> dict[str, Any]:
    return load_json_object(raw, "encoded-tensor header", where(name or None))


def _encoded(data: torch.Tensor, index: torch.Tensor, header: torch.Tensor, name: str) -> EncodedTensor:
    parsed = _parsed_header(bytes(header.cpu().numpy()), name)
    return EncodedTensor.from_parts(parsed, data.cpu(), index.cpu(), name or None)


@torch.library.custom_op("llmcomp::decode", mutates_args=())
def _decode_op(data: torch.Tensor, index: torch.Tensor, header: torch.Tensor, shape: list[int],
               dtype: torch.dtype, name: str) -> torch.Tensor:
    """The encoded tensor (``data``/``index``/``header`` buffers) decoded on ``data``'s device."""
    out = torch.empty(shape, dtype=dtype, device=data.device)
    if data.device.type == "cpu":
        return decode(_encoded(data, index, header, name), out=out, verify=False)
    from llmcomp_hf.codec.cuda import DeviceEncodedTensor

    parsed = _parsed_header(bytes(header.cpu().numpy()), name)
    return DeviceEncodedTensor.from_parts(parsed, data, index, name=name or None).decode(out, verify=False)


@_decode_op.register_fake
def _decode_fake(data: torch.Tensor, index: torch.Tensor, header: torch.Tensor, shape: list[int],
                 dtype: torch.dtype, name: str) -> torch.Tensor:
    return data.new_empty(shape, dtype=dtype)


@torch.library.custom_op("llmcomp::decode_rows", mutates_args=())
def _decode_rows_op(data: torch.Tensor, index: torch.Tensor, header: torch.Tensor, ids: torch.Tensor,
                    width: int, dtype: torch.dtype, name: str) -> torch.Tensor:
    """Rows ``ids`` of the encoded 2-D table (CPU buffers), on ``ids``'s device."""
    return decode_rows_of(_encoded(data, index, header, name), ids.cpu()).to(ids.device)


@_decode_rows_op.register_fake
def _decode_rows_fake(data: torch.Tensor, index: torch.Tensor, header: torch.Tensor, ids: torch.Tensor,
                      width: int, dtype: torch.dtype, name: str) -> torch.Tensor:
    return ids.new_empty((*ids.shape, width), dtype=dtype)


__all__ = ["addmm", "compiled_decode", "embedding", "linear", "weight_outlives_call", "widened"]
