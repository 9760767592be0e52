"""Which weights a config compresses, and small model lookups shared by the quantizer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from llmcomp_hf.config import CompressionConfig

Stamp = tuple[int, int, torch.dtype, torch.Size]


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


def stamp_of(param: torch.Tensor) -> Stamp:
    """Changes whenever the weight may have changed: new storage, in-place update, cast or reshape."""
    return (param.data_ptr(), param._version, param.dtype, param.shape)


def shared_tied_targets(model: torch.nn.Module) -> dict[str, str]:
    """``{target: source}`` for tied weights that really share their tensor (so one copy is saved)."""
    out = {}
    for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        a, b = tensor_of(model, target), tensor_of(model, source)
        if a is None or b is None:
            continue
        if a is b or (a.device.type != "meta" and a.device == b.device and a.data_ptr() == b.data_ptr()):
            out[target] = source
    return out


__all__ = ["Stamp", "select_weights", "shared_tied_targets", "skipped", "stamp_of", "tensor_of"]
