"""Swapping a model's layers for their compressed twins (``llmcomp_hf.modules``) and back.

``compressed_module`` picks the twin of one layer, ``tied_twin`` makes a twin that reads another
layer's encoded weight (tied embeddings), ``keep_compressed`` swaps a whole model after a
compress-on-load, ``decompress_modules`` swaps every twin back for its plain layer, weight decoded.
"""

from __future__ import annotations

from torch import nn

from llmcomp_hf.codec import EncodedTensor
from llmcomp_hf.compressed_fused import CompressedFused
from llmcomp_hf.modules import CompressedConv1D, CompressedEmbedding, CompressedLinear, EncodedWeight


def compressed_module(module: nn.Module, enc: EncodedTensor | EncodedWeight) -> nn.Module | None:
    """The compressed replacement of a plain Linear/Embedding for its encoded weight, or None.

    ``enc`` may be an EncodedWeight placeholder (on the meta device) that the loader fills later.
    A subclass is replaced only when it computes as its base class does (no ``forward`` of its own) and
    holds nothing but ``weight`` and ``bias``; ``plain_module`` gives the subclass back. Embeddings with
    ``max_norm`` (which rewrites the table) or sparse gradients are not replaced.
    """
    if _computes_as(module, nn.Linear):
        bias = None if module.bias is None else module.bias.detach()
        twin = CompressedLinear(enc, bias, shape=(module.out_features, module.in_features))
    elif type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers."):
        twin = CompressedConv1D(enc, module.bias.detach(), shape=tuple(module.weight.shape))
    elif _computes_as(module, nn.Embedding) and module.max_norm is None and not module.sparse:
        twin = CompressedEmbedding(enc, module.padding_idx, shape=(module.num_embeddings, module.embedding_dim))
    else:
        return None
    twin.plain_type = type(module)
    twin.plain_attrs = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"}
    return twin


def _computes_as(module: nn.Module, base: type[nn.Module]) -> bool:
    """``module`` is a ``base`` whose class keeps ``base.forward`` and adds no parameters, buffers or children."""
    if not isinstance(module, base) or type(module).forward is not base.forward:
        return False
    return type(module) is base or (set(module._parameters) <= {"weight", "bias"} and not module._buffers and not module._modules)


def tied_twin(module: nn.Module, source: EncodedWeight) -> nn.Module | None:
    """A compressed twin of ``module`` (a tied copy) that computes with ``source`` without owning it.

    ``source`` stays registered under the layer it was loaded into, so it is saved, moved, converted
    and counted once, there; this twin only reads it (an attribute, not a child module).
    """
    twin = compressed_module(module, source)
    if twin is None:
        return None
    del twin._modules["weight"]
    object.__setattr__(twin, "weight", source)
    return twin


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
    decoded: dict[int, nn.Parameter] = {}  # tied layers share one encoded weight, then one parameter
    for module_name, module in list(model.named_modules()):
        if not isinstance(module, (CompressedLinear, CompressedConv1D, CompressedEmbedding, CompressedFused)):
            continue
        parent_name, _, child = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.plain_module(decoded))
        fused = getattr(module, "fused_parameters", None)
        swapped += [f"{module_name}.{p.attr}" for p in fused] if fused else [f"{module_name}.weight"]
    return swapped


__all__ = ["compressed_module", "decompress_modules", "keep_compressed", "tied_twin"]
