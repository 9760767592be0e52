"""Which weights a config compresses, and small model lookups shared by the quantizer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from llmcomp_hf.config import CompressionConfig

Fingerprint = tuple[int, torch.dtype, torch.Size]


def select_weights(model: torch.nn.Module, config: CompressionConfig) -> list[str]:
    """Names of the ``weight`` parameters the config compresses, in module order."""
    kinds, dtypes = set(config.module_types), set(config.dtypes)
    names = []
    for module_name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is None or not any(c.__name__ in kinds for c in type(module).__mro__):
            continue
        if str(weight.dtype).removeprefix("torch.") not in dtypes or weight.numel() < config.min_numel:
            continue
        if skipped(module_name, config.modules_to_not_convert):
            continue
        names.append(f"{module_name}.weight" if module_name else "weight")
    return names


def compresses_key(key: str, dtype: str, shape: tuple[int, ...], config: CompressionConfig) -> bool:
    """The rule for checkpoint tensors that belong to no single module (``llmcomp compress``, MoE experts).

    ``*.weight`` with 2 or more dimensions, of a dtype in ``config.dtypes``, at least ``config.min_numel``
    elements, its module not in ``config.modules_to_not_convert``: the weights of Linear, Embedding
    and Conv layers, never norms, biases or buffers. ``dtype`` is a name such as ``"bfloat16"``.
    """
    if not (key.endswith(".weight") or key == "weight") or len(shape) < 2:
        return False
    numel = 1
    for d in shape:
        numel *= d
    if dtype not in config.dtypes or numel < config.min_numel:
        return False
    return not skipped(key[: -len(".weight")] if key != "weight" else "", config.modules_to_not_convert)


def skipped(module_name: str, patterns: list[str]) -> bool:
    """True when an entry equals the module path, a prefix of it, or a run of its segments."""
    padded = f".{module_name}."
    return any(f".{p}." in padded for p in patterns)


def tensor_of(model: torch.nn.Module, name: str) -> torch.Tensor | None:
    """Parameter or buffer ``name`` of ``model``, or None.

    (No transformers import here: this module loads while transformers registers the quantizer.)
    """
    module_name, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        return None
    value = getattr(module, attr, None)
    return value if isinstance(value, torch.Tensor) else None


def fingerprint(tensor: torch.Tensor) -> Fingerprint:
    """What the tensor holds: the ``sum32`` checksum of its bytes, its dtype and shape.

    Decided from content, not from storage pointers or version counters: ``p.data += 1`` and
    ``p.data.copy_(x)`` (PEFT's ``merge_and_unload``) change neither ``p._version`` nor its storage.
    One read of the weight (the checksum runs at memory speed), on the CPU.
    """
    from llmcomp_hf.codec.checksum import sum32

    flat = tensor.detach().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    raw = flat.contiguous().view(torch.uint8).numpy() if flat.numel() else flat.new_empty(0, dtype=torch.uint8).numpy()
    return (sum32(raw), tensor.dtype, tensor.shape)


def shared_tied_targets(model: torch.nn.Module) -> dict[str, str]:
    """``{target: source}`` for tied weights that really share their tensor (so one copy is saved)."""
    out = {}
    from llmcomp_hf._hf_compat import tied_weights

    for target, source in tied_weights(model).items():
        a, b = tensor_of(model, target), tensor_of(model, source)
        if a is None or b is None:
            continue
        if a is b or (a.device.type != "meta" and a.device == b.device and a.data_ptr() == b.data_ptr()):
            out[target] = source
    return out


__all__ = ["compresses_key", "Fingerprint", "fingerprint", "select_weights", "shared_tied_targets", "skipped", "tensor_of"]
