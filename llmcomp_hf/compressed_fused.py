"""Fused parameters (MoE experts' 3-D ``gate_up_proj``/``down_proj``) kept as the encoded weights they merge.

transformers 5 merges per-expert checkpoint weights (``experts.0.w1.weight``...) into 3-D parameters
with the model's own conversion ops (stack, concatenate). On the fly, ``CompressedFused`` replaces the
module holding such parameters: the per-expert weights stay encoded under their checkpoint names;
each forward decodes them, runs the same ops on them, and calls the original module with the result
(``torch.func.functional_call``), so outputs are bit-identical to a decoded load. Peak extra memory:
one module's fused parameters (and their per-expert pieces) while it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmcomp_hf import _hf_compat as hf_compat
from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.modules import EncodedWeight


@dataclass
class FusedParameter:
    """One parameter of the fused module and how the loader merges it."""

    attr: str  # the parameter's name in the module
    converter: Any  # the model's WeightConverter: its ops and patterns
    sources: dict[str, list[str]]  # source pattern -> paths (below the CompressedFused) of its weights, in load order
    layer_name: str  # the parameter's full name in the model
    shape: tuple[int, ...]
    dtype: torch.dtype


class CompressedFused(nn.Module):
    """A module whose fused parameters are merged, per forward, from weights that stay encoded."""

    def __init__(self, inner: nn.Module, parameters: list[FusedParameter], weights: dict[str, EncodedWeight]) -> None:
        super().__init__()
        for param in parameters:
            del inner._parameters[param.attr]  # the dense fused tensor goes; forward supplies it
        self.inner = inner
        self.fused_parameters = parameters
        for path, weight in weights.items():
            *parents, last = path.split(".")
            module: nn.Module = self
            for part in parents:
                if part not in module._modules:
                    module.add_module(part, nn.Module())
                module = module._modules[part]
            module.add_module(last, weight)

    def fused(self, decode: Callable[[EncodedWeight], torch.Tensor] = EncodedWeight.decoded) -> dict[str, torch.Tensor]:
        """Every fused parameter, merged from its weights as ``decode`` gives them."""
        out = {}
        for param in self.fused_parameters:
            tensors = {pattern: [decode(self.get_submodule(path)) for path in paths] for pattern, paths in param.sources.items()}
            out[param.attr] = hf_compat.run_merge(param.converter, tensors, param.layer_name)
        return out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(self.inner, self.fused(), args, kwargs)

    def check(self, file_of: Callable[[str], str | None]) -> None:
        """Raise FormatError unless the stored weights merge into parameters of the shapes the model expects
        (run on shapes alone, after loading: never a failure at forward)."""
        for param in self.fused_parameters:
            weights = {pattern: [self.get_submodule(path) for path in paths] for pattern, paths in param.sources.items()}
            try:
                got = hf_compat.run_merge(param.converter, {pattern: [torch.empty(w.shape, dtype=w.dtype, device="meta")
                                                                      for w in ws] for pattern, ws in weights.items()},
                                          param.layer_name)
                found = f"shape {list(got.shape)} ({got.dtype})"
            except (RuntimeError, ValueError) as exc:  # e.g. experts of different shapes cannot be stacked
                got, found = None, f"no tensor ({exc})"
            if got is None or (tuple(got.shape), got.dtype) != (param.shape, param.dtype):
                names = [w._name for ws in weights.values() for w in ws]
                raise FormatError(
                    f"the stored weights merged into {param.layer_name!r} give {found} where the model expects shape "
                    f"{list(param.shape)} ({param.dtype}){where(names[0], file_of(names[0]))} (all: {', '.join(names[:4])}"
                    f"{', ...' if len(names) > 4 else ''}); the checkpoint does not belong to this model or is damaged"
                )

    def plain_module(self, decoded: dict[int, nn.Parameter] | None = None) -> nn.Module:
        """The module this replaced, holding its fused parameters decoded (and verified)."""
        for attr, tensor in self.fused(lambda w: w.decoded(verify=True)).items():
            self.inner.register_parameter(attr, nn.Parameter(tensor, requires_grad=False))
        return self.inner

    def extra_repr(self) -> str:
        return ", ".join(f"{p.attr}={list(p.shape)}" for p in self.fused_parameters)


__all__ = ["CompressedFused", "FusedParameter"]
