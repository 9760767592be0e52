"""Modules that keep weights entropy-coded in memory and decode them just before use.

``CompressedLinear`` / ``CompressedEmbedding`` hold an ``EncodedWeight`` child named ``weight``
whose buffers carry the checkpoint names of docs/format.md part 2
(``X.weight.llmcomp_data|index|header``), so ``state_dict()`` and ``save_pretrained`` write the
compressed shards as they are, without decoding. A Linear decodes into a per-thread scratch
buffer shared by every layer (peak extra memory: the largest layer); an Embedding decodes only
the blocks that hold the requested rows.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmcomp_hf import fused
from llmcomp_hf.codec import EncodedTensor, decode
from llmcomp_hf.codec.api import decode_rows, torch_dtype
from llmcomp_hf.codec.encoded import load_json_object
from llmcomp_hf.errors import where


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
        self._key: tuple[int, int] | None = None
        self._device_enc: Any = None

    @classmethod
    def placeholder(cls, name: str, sizes: tuple[int, int, int], device: str | torch.device = "meta") -> "EncodedWeight":
        """Empty buffers of the checkpoint's sizes (data, index, header bytes), for the loader to fill."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.register_buffer("llmcomp_data", torch.empty(sizes[0], dtype=torch.uint8, device=device))
        self.register_buffer("llmcomp_index", torch.empty(sizes[1], dtype=torch.int64, device=device))
        self.register_buffer("llmcomp_header", torch.empty(sizes[2], dtype=torch.uint8, device=device))
        self._name, self._encoded, self._key, self._device_enc = name, None, None, None
        return self

    @property
    def encoded(self) -> EncodedTensor:
        """The EncodedTensor over the current buffers (rebuilt if they were replaced or moved)."""
        key = (self.llmcomp_data.data_ptr(), self.llmcomp_index.data_ptr())
        if self._encoded is None or key != self._key:
            header = load_json_object(bytes(self.llmcomp_header.cpu().numpy()), "encoded-tensor header", where(self._name))
            self._encoded = EncodedTensor.from_parts(header, self.llmcomp_data.cpu(), self.llmcomp_index.cpu(), self._name)
            self._key = key
        return self._encoded

    @property
    def dtype(self) -> torch.dtype:
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
    out = SCRATCH.get(tuple(weight.shape), weight.dtype, weight.device)
    if weight.device.type == "cpu":  # no checksum on every forward (checked at load)
        return fused.decode_into(weight.encoded, out)
    return weight.decode(out=out)


def _stamp(weight: EncodedWeight) -> tuple[int, int] | None:
    """The buffers' in-place version counters (None for inference tensors, which have none)."""
    try:
        return weight.llmcomp_data._version, weight.llmcomp_index._version
    except RuntimeError:
        return None


class CompressedLinear(nn.Module):
    """A Linear layer whose weight stays entropy-coded; decoded per forward into shared scratch."""

    def __init__(self, enc: EncodedTensor | EncodedWeight, bias: torch.Tensor | None = None, shape: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.weight, (self.out_features, self.in_features) = _encoded_2d(enc, shape, "CompressedLinear")
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.weight.encoded
        if fused.applies(x, enc, self.weight.device):  # decoded a run of rows at a time (llmcomp_hf.fused)
            plan = self.__dict__.get("_row_plan")
            if plan is None or plan.enc is not enc:
                plan = self.__dict__["_row_plan"] = fused.RowPlan(enc)
            return fused.linear(x, plan, self.bias, lambda: _scratch_decode(self.weight), self.weight.decode,
                                _stamp(self.weight))
        return fused.like_loaded(x, _scratch_decode(self.weight), self.bias)

    def plain_module(self) -> nn.Linear:
        """An ordinary ``nn.Linear`` holding the decoded weight (and this layer's bias)."""
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        return _with_params(plain, self.weight, self.bias)

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
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), _scratch_decode(self.weight)).view(size_out)

    def plain_module(self) -> nn.Module:
        """The transformers ``Conv1D`` this layer replaced, holding the decoded weight."""
        plain = self.plain_type.__new__(self.plain_type)
        nn.Module.__init__(plain)
        plain.nf, plain.nx = self.nf, self.nx
        return _with_params(plain, self.weight, self.bias)


class CompressedEmbedding(nn.Module):
    """An Embedding whose table stays entropy-coded; a lookup decodes only the blocks it needs."""

    def __init__(self, enc: EncodedTensor | EncodedWeight, padding_idx: int | None = None, shape: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.weight, (self.num_embeddings, self.embedding_dim) = _encoded_2d(enc, shape, "CompressedEmbedding")
        self.padding_idx = padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.weight.device.type != "cpu":
            return F.embedding(ids, _scratch_decode(self.weight), self.padding_idx)
        return decode_rows(self.weight.encoded, ids.cpu()).to(ids.device)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, ratio={self.weight.encoded.ratio:.3f}"

    def plain_module(self) -> nn.Embedding:
        """An ordinary ``nn.Embedding`` holding the decoded table."""
        plain = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx, device="meta")
        return _with_params(plain, self.weight, None)


def _with_params(plain: nn.Module, weight: EncodedWeight, bias: torch.Tensor | None) -> nn.Module:
    """``plain`` with ``weight`` decoded (a fresh tensor on the weight's device) and ``bias`` as parameters."""
    plain.weight = nn.Parameter(weight.decode(verify=True), requires_grad=False)
    if bias is not None:
        plain.bias = nn.Parameter(bias.detach(), requires_grad=False)
    elif "bias" in plain._parameters:
        plain.bias = None
    return plain


def compressed_module(module: nn.Module, enc: EncodedTensor | EncodedWeight) -> nn.Module | None:
    """The compressed replacement of a plain Linear/Embedding for its encoded weight, or None.

    ``enc`` may be an EncodedWeight placeholder (on the meta device) that the loader fills later.
    Embeddings with ``max_norm`` (which rewrites the table) or sparse gradients are not replaced.
    """
    if type(module) is nn.Linear:
        bias = None if module.bias is None else module.bias.detach()
        return CompressedLinear(enc, bias, shape=(module.out_features, module.in_features))
    if type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers."):
        twin = CompressedConv1D(enc, module.bias.detach(), shape=tuple(module.weight.shape))
        twin.plain_type = type(module)
        return twin
    if type(module) is nn.Embedding and module.max_norm is None and not module.sparse:
        return CompressedEmbedding(enc, module.padding_idx, shape=(module.num_embeddings, module.embedding_dim))
    return None


def keep_compressed(model: nn.Module, encoded: dict[str, EncodedTensor]) -> list[str]:
    """Swap every Linear/Embedding whose ``weight`` is in ``encoded`` for its compressed twin.

    Returns the names of the swapped weights; the dense weights are released.
    """
    swapped = []
    for name, enc in encoded.items():
        module_name, _, attr = name.rpartition(".")
        if attr != "weight":
            continue
        parent_name, _, child = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child, None)
        replacement = compressed_module(module, enc) if module is not None else None
        if replacement is not None:
            replacement.to(module.weight.device)
            setattr(parent, child, replacement)
            swapped.append(name)
    return swapped


def decompress_modules(model: nn.Module) -> list[str]:
    """Swap every compressed layer of ``model`` back for its plain module, its weight decoded (and verified).

    Returns the names of the decoded weights. The inverse of :func:`keep_compressed`.
    """
    swapped = []
    for module_name, module in list(model.named_modules()):
        if not isinstance(module, (CompressedLinear, CompressedConv1D, CompressedEmbedding)):
            continue
        parent_name, _, child = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.plain_module())
        swapped.append(f"{module_name}.weight")
    return swapped


def scratch_nbytes() -> int:
    """Bytes held by this thread's decode scratch buffers (whole weights and runs of rows)."""
    return SCRATCH.nbytes() + fused.scratch_nbytes()
