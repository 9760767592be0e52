"""On the fly: which merged weights (MoE experts) stay encoded inside a ``CompressedFused`` module.

A model converter merges per-expert checkpoint weights into one fused parameter. Its weights stay
encoded when every key it takes is a lossless compressed weight, its ops only stack/concatenate
(``hf_compat.runs_pure_merge``), and the module holding the fused parameters holds nothing else; the
converter is then dropped from the loader's conversions, so each weight's parts load into the
module's placeholders under their own (renamed) names. Otherwise they are decoded at load, as before.
"""

from __future__ import annotations

from typing import Any

import torch

from llmcomp_hf import _hf_compat as hf_compat
from llmcomp_hf._stored_parts import StoredParts
from llmcomp_hf.compressed_fused import CompressedFused, FusedParameter


def place_fused(model: torch.nn.Module, conversions: list[Any], merged: list[str], plain_keys: list[str],
                parts: StoredParts) -> tuple[list[Any], list[str]]:
    """Swap in a ``CompressedFused`` for each module whose fused parameters can stay encoded.

    ``merged``: the lossless compressed weights (checkpoint names) a model converter merges; ``plain_keys``:
    the checkpoint's other tensors. Returns the converters to drop from the loader's conversions and the
    weights of ``merged`` left to the converters (decoded at load).
    """
    if not merged:
        return [], []
    merges = hf_compat.merge_targets([*merged, *plain_keys], conversions, model)
    stored = set(merged)
    ok: dict[int, bool] = {}
    for key, (converter, _, _, path) in merges.items():
        fits = key in stored and path is not None and path.split(".")[0] != "inner" and hf_compat.runs_pure_merge(converter)
        ok[id(converter)] = ok.get(id(converter), True) and fits
    modules: dict[str, dict[str, list[str]]] = {}  # module -> fused parameter -> its weights
    for key in merged:
        if key in merges:
            module, _, attr = merges[key][2].rpartition(".")
            modules.setdefault(module, {}).setdefault(attr, []).append(key)
    converters_of = {m: {id(merges[k][0]) for keys in attrs.values() for k in keys} for m, attrs in modules.items()}
    changed = True
    while changed:  # a module keeps its parameters encoded only if all its converters can
        changed = False
        for module, attrs in modules.items():
            ids = converters_of[module]
            if any(ok[i] for i in ids) and not (all(ok[i] for i in ids) and _holds_only(model, module, set(attrs))):
                for i in ids:
                    changed |= ok[i]
                    ok[i] = False
    kept = [m for m in modules if all(ok[i] for i in converters_of[m])]
    for module in kept:
        _install(model, module, modules[module], merges, parts)
    dropped = {id(merges[k][0]): merges[k][0] for m in kept for keys in modules[m].values() for k in keys}
    left = [key for key in merged if key not in merges or not ok[id(merges[key][0])]]
    return list(dropped.values()), left


def _holds_only(model: torch.nn.Module, name: str, attrs: set[str]) -> bool:
    """Module ``name`` holds exactly the parameters ``attrs`` (directly) and no other state."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return False
    own = {k for k, v in module._parameters.items() if v is not None}
    return own == attrs and set(module.state_dict()) == attrs and "inner" not in module._modules


def _install(model: torch.nn.Module, name: str, attrs: dict[str, list[str]], merges: dict[str, tuple],
             parts: StoredParts) -> None:
    module = model.get_submodule(name)
    weights, parameters = {}, []
    for attr, keys in attrs.items():
        param = module._parameters[attr]
        converter = merges[keys[0]][0]
        sources: dict[str, list[str]] = {}
        for key in sorted(keys, key=hf_compat.loader_key_order):
            _, pattern, _, path = merges[key]
            sources.setdefault(pattern, []).append(path)
            weights[path] = parts.placeholder(key, param.dtype)
        parameters.append(FusedParameter(attr, converter, sources, f"{name}.{attr}", tuple(param.shape), param.dtype))
    hf_compat.mark_initialized(module)  # its parameters come from the encoded weights, not from an init
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, CompressedFused(module, parameters, weights))


__all__ = ["place_fused"]
