"""Compose stages in the fixed order prune -> low-rank -> quantize, each at most once.

Stored tensor names: ``weight`` (pruned, when nothing quantizes it), ``left``/``right`` and
``residual.*`` (low-rank), and the quantizer's tensors under the name of what it quantized
(``weight.codes``, ``left.codes``, ...). ``meta["stages"]`` holds each stage's own meta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from llmcomp_hf.transforms.base import Encoded, Transform, register
from llmcomp_hf.transforms.lowrank import LowRank, _prefixed, _unprefixed
from llmcomp_hf.transforms.prune import MagnitudePrune, NMPrune
from llmcomp_hf.transforms.quantize import Quantizer

ORDER = ("prune", "lowrank", "quantize")


def stage_kind(stage: Any) -> str:
    """``"prune"``, ``"lowrank"`` or ``"quantize"``; ValueError for anything else."""
    if isinstance(stage, (MagnitudePrune, NMPrune)):
        return "prune"
    if isinstance(stage, LowRank):
        return "lowrank"
    if isinstance(stage, Quantizer):
        return "quantize"
    raise ValueError(f"Pipeline stage must be a prune, LowRank or quantizer config, got {type(stage).__name__}"
                     + ("; flatten nested pipelines into one" if isinstance(stage, Pipeline) else ""))


@register
@dataclass(frozen=True)
class Pipeline(Transform):
    """Apply ``stages`` in order and reconstruct in reverse. Impossible combinations raise ValueError.

    An ``importance`` given to ``apply`` goes to the stages that use it (pruning, EntropyCodedQuant);
    a ``row_importance`` to the EntropyCodedQuant stage (without a low-rank stage).
    """

    name: ClassVar[str] = "pipeline"
    compute_dtype: ClassVar[torch.dtype | None] = None
    uses_importance: ClassVar[bool] = True
    uses_hessian: ClassVar[bool] = True
    uses_row_importance: ClassVar[bool] = True
    stages: tuple[Transform, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.stages, (list, tuple)) or not self.stages:
            raise ValueError("Pipeline.stages must be a non-empty list of transform configs, "
                             "e.g. Pipeline(stages=(NMPrune(2, 4), UniformQuant(bits=4)))")
        object.__setattr__(self, "stages", tuple(self.stages))
        kinds = [stage_kind(s) for s in self.stages]
        if kinds != sorted(set(kinds), key=ORDER.index):
            raise ValueError(f"Pipeline.stages must follow the order prune -> lowrank -> quantize with at most "
                             f"one of each, got {kinds}; reorder or drop stages")
        by_kind = dict(zip(kinds, self.stages))
        prune, lowrank, quant = (by_kind.get(k) for k in ORDER)
        if prune is not None and lowrank is not None:
            raise ValueError("Pipeline: a low-rank approximation of a pruned weight is dense, so the pruning "
                             "would be lost; use prune -> quantize, or LowRank(residual=...) without pruning")
        if lowrank is not None and quant is not None and lowrank.residual is not None:
            raise ValueError("Pipeline: LowRank.residual and a quantize stage both given; either quantize the "
                             "factors (quantize stage) or the residual (LowRank.residual), not both")
        if prune is not None and quant is not None and not quant.exact_zero:  # type: ignore[attr-defined]
            raise ValueError(f"Pipeline: {type(quant).__name__} does not map 0 exactly, so pruned zeros would "
                             "come back non-zero; use KMeansQuant(zero_level=True) after pruning")

    def _stage(self, kind: str) -> Any:
        return next((s for s in self.stages if stage_kind(s) == kind), None)

    def _apply(self, weight: torch.Tensor, importance: torch.Tensor | None = None,
               hessian: torch.Tensor | None = None, row_importance: torch.Tensor | None = None) -> Encoded:
        prune, lowrank, quant = (self._stage(k) for k in ORDER)
        if row_importance is not None and (lowrank is not None or not getattr(quant, "uses_row_importance", 0)):
            raise ValueError("Pipeline: row_importance is used by an EntropyCodedQuant stage, and not with a low-rank "
                             "stage; drop it or change the stages")
        if hessian is not None and (prune is not None or lowrank is not None or not getattr(quant, "uses_hessian", 0)):
            raise ValueError("Pipeline: a hessian (error-feedback rounding) needs an EntropyCodedQuant stage alone; "
                             "drop it or the prune/lowrank stages")
        if importance is not None and (lowrank is not None or not any(s.uses_importance for s in self.stages)):
            raise ValueError("Pipeline: importance is used by pruning and EntropyCodedQuant stages, and not "
                             "with a low-rank stage; drop it or change the stages")
        tensors: dict[str, torch.Tensor] = {}
        packed: dict[str, int] = {}
        stages: dict[str, Any] = {}
        floats = {"weight": weight}  # the float tensors a final quantizer would take
        if prune is not None:
            t = prune.apply(weight, importance=importance, measure=False)
            stages["prune"], floats = t.meta, {"weight": t.tensors["weight"]}
        if lowrank is not None:
            t = lowrank.apply(weight, measure=False)
            stages["lowrank"] = t.meta
            floats = {k: t.tensors[k] for k in ("left", "right")}
            tensors.update({k: v for k, v in t.tensors.items() if k not in floats})
            packed.update(t.packed_bits)
        if quant is not None:
            stages["quantize"] = {}
            for key, value in floats.items():
                imp = importance if quant.uses_importance else None
                t = quant.apply(value, importance=imp, hessian=hessian, row_importance=row_importance, measure=False)
                stages["quantize"][key] = t.meta
                tensors.update(_prefixed(t.tensors, key))
                packed.update({f"{key}.{k}": v for k, v in t.packed_bits.items()})
        else:
            tensors.update(floats)
        return tensors, {"stages": stages}, packed

    def reconstruct(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        _, lowrank, quant = (self._stage(k) for k in ORDER)
        parts = dict(tensors)
        stages = meta["stages"]
        if quant is not None:
            for key, qmeta in stages["quantize"].items():
                parts[key] = quant.reconstruct(_unprefixed(tensors, key), qmeta)
        out = lowrank.reconstruct(parts, stages["lowrank"]) if lowrank is not None else parts["weight"]
        return out.reshape(meta["shape"]).to(getattr(torch, meta["dtype"]))
