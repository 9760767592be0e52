"""Modules that keep weights entropy-coded in memory and decode them just before use.

``CompressedLinear`` / ``CompressedEmbedding`` hold an ``EncodedWeight`` child named ``weight``
whose buffers carry the checkpoint names of docs/format.md part 2
(``X.weight.llmcomp_data|index|header``), so ``state_dict()`` and ``save_pretrained`` write the
compressed shards as they are, without decoding. A Linear decodes into a per-thread scratch
buffer shared by every layer (peak extra memory: the largest layer); an Embedding decodes only
the blocks that hold the requested rows. A weight asked for in another dtype (``dtype=`` at load,
``.to(dtype)``) stays encoded as stored and is cast after each decode, exactly as the decoded weight
would have been.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmcomp_hf import _graph_ops as graph_ops
from llmcomp_hf import fused
from llmcomp_hf.codec import EncodedTensor, decode
from llmcomp_hf.codec.api import decode_rows, torch_dtype
from llmcomp_hf.codec.encoded import load_json_object
from llmcomp_hf.errors import LlmcompError, where


class _Scratch(threading.local):
    """One flat decode buffer per (device, dtype) and thread, grown to the largest request."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = 1
        for d in shape:
            numel *= d
        key = (str(device), dtype)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self.buffers[key] = buf
        return buf[:numel].view(shape)

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())


SCRATCH = _Scratch()


class EncodedWeight(nn.Module):
    """An encoded tensor as three buffers, with the tensor-like attributes callers read.

    ``dtype``, ``shape``, ``device``, ``size()``, ``numel()`` and ``dim()`` describe the decoded
    tensor, so code that inspects ``module.weight.dtype`` keeps working.
    """

    def __init__(self, enc: EncodedTensor) -> None:
        super().__init__()
        self.register_buffer("llmcomp_data", torch.from_numpy(enc.data))
        self.register_buffer("llmcomp_index", torch.from_numpy(enc.index))
        header = np.frombuffer(enc.header_json().encode("utf-8"), np.uint8).copy()
        self.register_buffer("llmcomp_header", torch.from_numpy(header))
        self._name = enc.name
        self._encoded: EncodedTensor | None = enc
        self.decoded_dtype: torch.dtype | None = torch_dtype(enc.dtype)  # a plain attribute for torch.compile
        self._key: tuple[int, int] | None = None
        self._device_enc: Any = None
        self.casts: tuple[torch.dtype, ...] = ()  # dtype conversions applied to the decoded weight, in order

    @classmethod
    def placeholder(cls, name: str, sizes: tuple[int, int, int], device: str | torch.device = "meta") -> "EncodedWeight":
        """Empty buffers of the checkpoint's sizes (data, index, header bytes), for the loader to fill."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.register_buffer("llmcomp_data", torch.empty(sizes[0], dtype=torch.uint8, device=device))
        self.register_buffer("llmcomp_index", torch.empty(sizes[1], dtype=torch.int64, device=device))
        self.register_buffer("llmcomp_header", torch.empty(sizes[2], dtype=torch.uint8, device=device))
        self._name, self._encoded, self._key, self._device_enc = name, None, None, None
        self.decoded_dtype = None  # known once the header is loaded (``encoded``)
        self.casts = ()
        return self

    @property
    def encoded(self) -> EncodedTensor:
        """The EncodedTensor over the current buffers (rebuilt if they were replaced or moved)."""
        key = (self.llmcomp_data.data_ptr(), self.llmcomp_index.data_ptr())
        if self._encoded is None or key != self._key:
            header = load_json_object(bytes(self.llmcomp_header.cpu().numpy()), "encoded-tensor header", where(self._name))
            self._encoded = EncodedTensor.from_parts(header, self.llmcomp_data.cpu(), self.llmcomp_index.cpu(), self._name)
            self._key = key
            self.decoded_dtype = torch_dtype(self._encoded.dtype)
        return self._encoded

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the layer computes in: the stored one, or the last dtype it was converted to."""
        return self.casts[-1] if self.casts else self.stored_dtype

    @property
    def stored_dtype(self) -> torch.dtype:
        return torch_dtype(self.encoded.dtype)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.encoded.shape)

    @property
    def device(self) -> torch.device:
        return self.llmcomp_data.device

    @property
    def requires_grad(self) -> bool:
        return False

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return self.encoded.numel

    def dim(self) -> int:
        return len(self.encoded.shape)

    @property
    def nbytes_encoded(self) -> int:
        return sum(b.numel() * b.element_size() for b in (self.llmcomp_data, self.llmcomp_index, self.llmcomp_header))

    def decode(self, out: torch.Tensor | None = None, verify: bool = False) -> torch.Tensor:
        """The full decoded tensor (into ``out`` when given), decoded on the buffers' device."""
        if self.device.type == "cpu":
            return decode(self.encoded, out=out, verify=verify)
        from llmcomp_hf.codec.cuda import DeviceEncodedTensor  # GPU: bytes stay resident, decoded there

        if self._device_enc is None or self._key != (self.llmcomp_data.data_ptr(), self.llmcomp_index.data_ptr()):
            self._device_enc = DeviceEncodedTensor.from_parts(
                self.encoded.header, self.llmcomp_data, self.llmcomp_index, name=self._name
            )
        return self._device_enc.decode(out, verify=verify)

    def cast(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (decoded, stored dtype) through every dtype conversion the weight went through (a fresh
        tensor per conversion, freed after use: the shared scratch may be an inference tensor)."""
        for dtype in self.casts:
            tensor = tensor.to(dtype)
        return tensor

    def decoded(self, verify: bool = False) -> torch.Tensor:
        """A fresh tensor holding the weight as the model sees it (decoded, then cast)."""
        return self.cast(self.decode(verify=verify))

    def _apply(self, fn: Any, recurse: bool = True) -> "EncodedWeight":
        """``.to(device/dtype)``, ``.half()``, ``.cuda()``...: the encoded bytes move, a dtype change is recorded.

        The bytes keep their stored dtype; the new dtype is applied after each decode, in the order the
        conversions were made (so ``.to(float16).to(float32)`` rounds through float16 as a decoded weight
        would). A conversion that would rewrite the bytes themselves (``module.type(torch.float16)``) is refused.
        """
        def probe(dtype: torch.dtype) -> torch.dtype:
            return fn(torch.empty(0, dtype=dtype, device=self.llmcomp_data.device)).dtype

        if probe(torch.uint8) != torch.uint8:
            raise LlmcompError(
                f"this conversion would rewrite the encoded bytes of a compressed layer{where(self._name)}; "
                "use model.to(dtype), which keeps them encoded, or model.dequantize() first"
            )
        target = probe(torch.float32)
        changes_dtype = target != torch.float32 or probe(torch.bfloat16) != torch.bfloat16
        super()._apply(fn, recurse)
        loaded = self.llmcomp_header.device.type != "meta"
        current = self.casts[-1] if self.casts else self.stored_dtype if loaded else None
        if changes_dtype and target != current:
            self.casts = self.casts + (target,)
        return self

    def forward(self) -> torch.Tensor:  # pragma: no cover - not a layer
        raise RuntimeError("EncodedWeight holds data; call .decode()")


def _encoded_2d(enc: EncodedTensor | EncodedWeight, shape: tuple[int, ...] | None, kind: str) -> tuple[EncodedWeight, tuple[int, int]]:
    """The EncodedWeight for ``enc`` and its 2-D shape (``shape`` when the weight is a placeholder)."""
    weight = enc if isinstance(enc, EncodedWeight) else EncodedWeight(enc)
    shape = tuple(shape or weight.shape)
    weight.expected_shape = shape  # what the layer needs: a stored header declaring another is refused
    if len(shape) != 2:
        raise ValueError(f"{kind} needs a 2-D weight, got {list(shape)} for {weight._name!r}")
    return weight, shape


def _scratch_decode(weight: EncodedWeight) -> torch.Tensor:
    out = SCRATCH.get(tuple(weight.shape), weight.stored_dtype, weight.device)
    if weight.device.type == "cpu":  # no checksum on every forward (checked at load)
        return weight.cast(fused.decode_into(weight.encoded, out))
    return weight.cast(weight.decode(out=out))


def _stamp(weight: EncodedWeight) -> tuple[int, int] | None:
    """The buffers' in-place version counters (None for inference tensors, which have none)."""
    try:
        return weight.llmcomp_data._version, weight.llmcomp_index._version
    except RuntimeError:
        return None


class CompressedLinear(nn.Module):
    """A Linear layer whose weight stays entropy-coded; decoded per forward into shared scratch."""

    plain_type: type[nn.Module] = nn.Linear  # what plain_module rebuilds (a subclass it replaced, or nn.Linear)

    def __init__(self, enc: EncodedTensor | EncodedWeight, bias: torch.Tensor | None = None, shape: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.weight, (self.out_features, self.in_features) = _encoded_2d(enc, shape, "CompressedLinear")
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if graph_ops.weight_outlives_call(x, self.bias):  # training below this layer, or torch.compile
            return graph_ops.linear(x, self.weight, self.bias, _scratch_decode)
        enc = self.weight.encoded
        if not self.weight.casts and fused.applies(x, enc, self.weight.device):  # a run of rows at a time
            plan = self.__dict__.get("_row_plan")
            if plan is None or plan.enc is not enc:
                plan = self.__dict__["_row_plan"] = fused.RowPlan(enc)
            return fused.linear(x, plan, self.bias, lambda: _scratch_decode(self.weight), self.weight.decode,
                                _stamp(self.weight))
        return fused.like_loaded(x, graph_ops.widened(_scratch_decode(self.weight), x), self.bias)

    def plain_module(self, decoded: dict[int, nn.Parameter] | None = None) -> nn.Linear:
        """An ordinary ``nn.Linear`` (or the subclass replaced) holding the decoded weight and this layer's bias."""
        if self.plain_type is nn.Linear:
            plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        else:
            plain = _blank(self)
        return _with_params(plain, self.weight, self.bias, decoded)

    def extra_repr(self) -> str:
        enc = self.weight.encoded
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, ratio={enc.ratio:.3f}"


class CompressedConv1D(nn.Module):
    """transformers' GPT-2 style ``Conv1D`` (``x @ W + b``, W of shape (nx, nf)) with an encoded weight."""

    def __init__(self, enc: EncodedTensor | EncodedWeight, bias: torch.Tensor, shape: tuple[int, int]) -> None:
        super().__init__()
        self.weight, (self.nx, self.nf) = _encoded_2d(enc, shape, "CompressedConv1D")
        self.bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.size()[:-1] + (self.nf,)  # the same op as Conv1D, so results are bit-identical
        if graph_ops.weight_outlives_call(x, self.bias):  # training below this layer, or torch.compile
            return graph_ops.addmm(self.bias, x.view(-1, x.size(-1)), self.weight, _scratch_decode).view(size_out)
        weight = graph_ops.widened(_scratch_decode(self.weight), x)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), weight).view(size_out)

    def plain_module(self, decoded: dict[int, nn.Parameter] | None = None) -> nn.Module:
        """The transformers ``Conv1D`` this layer replaced, holding the decoded weight."""
        return _with_params(_blank(self), self.weight, self.bias, decoded)


class CompressedEmbedding(nn.Module):
    """An Embedding whose table stays entropy-coded; a lookup decodes only the blocks it needs."""

    plain_type: type[nn.Module] = nn.Embedding

    def __init__(self, enc: EncodedTensor | EncodedWeight, padding_idx: int | None = None, shape: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.weight, (self.num_embeddings, self.embedding_dim) = _encoded_2d(enc, shape, "CompressedEmbedding")
        self.padding_idx = padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # the table is frozen: autograd keeps nothing of it
            return graph_ops.embedding(ids, self.weight, self.padding_idx)
        if self.weight.device.type != "cpu":
            return F.embedding(ids, _scratch_decode(self.weight), self.padding_idx)
        return self.weight.cast(decode_rows(self.weight.encoded, ids.cpu())).to(ids.device)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, ratio={self.weight.encoded.ratio:.3f}"

    def plain_module(self, decoded: dict[int, nn.Parameter] | None = None) -> nn.Embedding:
        """An ordinary ``nn.Embedding`` (or the subclass replaced) holding the decoded table."""
        if self.plain_type is nn.Embedding:
            plain = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx, device="meta")
        else:
            plain = _blank(self)
        return _with_params(plain, self.weight, None, decoded)


def _blank(twin: nn.Module) -> nn.Module:
    """An instance of the class ``twin`` replaced, with that module's attributes and no parameters yet."""
    plain = twin.plain_type.__new__(twin.plain_type)
    nn.Module.__init__(plain)
    plain.__dict__.update(twin.plain_attrs)
    return plain


def _with_params(plain: nn.Module, weight: EncodedWeight, bias: torch.Tensor | None,
                 decoded: dict[int, nn.Parameter] | None = None) -> nn.Module:
    """``plain`` with ``weight`` decoded (a fresh tensor on the weight's device) and ``bias`` as parameters.

    ``decoded`` maps each EncodedWeight already decoded to its parameter, so tied layers share one again.
    """
    decoded = {} if decoded is None else decoded
    if id(weight) not in decoded:
        decoded[id(weight)] = nn.Parameter(weight.decoded(verify=True), requires_grad=False)
    plain.weight = decoded[id(weight)]
    if bias is not None:
        plain.bias = nn.Parameter(bias.detach(), requires_grad=False)
    elif "bias" in plain._parameters:
        plain.bias = None
    return plain


def scratch_nbytes() -> int:
    """Bytes held by this thread's decode scratch buffers (whole weights and runs of rows)."""
    return SCRATCH.nbytes() + fused.scratch_nbytes()
