"""Magnitude pruning, unstructured (a fraction of the whole tensor) or N:M (along the input dim).

The pruned weight stays dense, zeros in place, stored as ``weight`` in the input dtype: the entropy
coder codes the zeros, so there is no separate mask tensor. Ties are broken by position (stable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from llmcomp_hf.transforms.base import Encoded, Transform, check_float, check_int, register


def _scores(weight: torch.Tensor, importance: torch.Tensor | None) -> torch.Tensor:
    """|w|, or |w| * sqrt(importance of its input channel) (Wanda: the size of w's contribution)."""
    score = weight.abs().to(torch.float32)
    if importance is None:
        return score
    return (score.reshape(weight.shape[0], -1) * importance.sqrt()).reshape(weight.shape)


def _pruned_meta(weight: torch.Tensor, out: torch.Tensor) -> dict[str, Any]:
    return {"zeros": int((out == 0).sum()), "pruned": int(((out == 0) & (weight != 0)).sum())}


@register
@dataclass(frozen=True)
class MagnitudePrune(Transform):
    """Zero exactly ``round(sparsity * numel)`` elements: those of smallest magnitude.

    With ``importance`` (per input channel) the score is ``|w| * sqrt(importance)`` (Wanda).
    """

    name: ClassVar[str] = "prune"
    compute_dtype: ClassVar[torch.dtype | None] = None
    uses_importance: ClassVar[bool] = True
    sparsity: float = 0.5

    def __post_init__(self) -> None:
        check_float("MagnitudePrune", "sparsity", self.sparsity, 0.0, 1.0, hi_open=True)

    def mask(self, weight: torch.Tensor, importance: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean keep-mask of ``weight``'s shape."""
        flat = _scores(weight, importance).reshape(-1)
        k = round(self.sparsity * flat.numel())
        keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
        if k:
            order = torch.sort(flat, stable=True).indices
            keep[order[:k]] = False
        return keep.reshape(weight.shape)

    def _apply(self, weight: torch.Tensor, importance: torch.Tensor | None = None) -> Encoded:
        zero = torch.zeros((), dtype=weight.dtype)  # +0.0: one bit pattern, never -0.0
        out = torch.where(self.mask(weight, importance), weight, zero)
        return {"weight": out}, _pruned_meta(weight, out), {}

    def reconstruct(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        return tensors["weight"].reshape(meta["shape"]).to(getattr(torch, meta["dtype"]))


@register
@dataclass(frozen=True)
class NMPrune(Transform):
    """N:M sparsity: in every run of ``m`` consecutive inputs of a row keep the ``n`` largest magnitudes.

    ``NMPrune(n=2, m=4)`` is the 2:4 pattern of sparse tensor cores. The last dim must divide by ``m``.
    With ``importance`` (per input channel) the score is ``|w| * sqrt(importance)`` (Wanda).
    """

    name: ClassVar[str] = "nm_prune"
    compute_dtype: ClassVar[torch.dtype | None] = None
    uses_importance: ClassVar[bool] = True
    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        check_int("NMPrune", "m", self.m, 2, 256)
        check_int("NMPrune", "n", self.n, 1, self.m - 1, hint=" (n is how many of every m to keep)")

    def mask(self, weight: torch.Tensor, importance: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean keep-mask of ``weight``'s shape with exactly ``n`` True per run of ``m``."""
        if weight.dim() < 2 or weight.shape[-1] % self.m:
            raise ValueError(f"NMPrune({self.n}:{self.m}) needs a weight with >= 2 dims whose last dim divides "
                             f"by {self.m}, got shape {tuple(weight.shape)}; use MagnitudePrune for this tensor")
        runs = _scores(weight, importance).reshape(-1, self.m)
        # stable descending order: among equal magnitudes the earlier position is kept
        order = torch.sort(runs, dim=1, descending=True, stable=True).indices
        keep = torch.zeros_like(runs, dtype=torch.bool)
        keep.scatter_(1, order[:, : self.n], True)
        return keep.reshape(weight.shape)

    def _apply(self, weight: torch.Tensor, importance: torch.Tensor | None = None) -> Encoded:
        zero = torch.zeros((), dtype=weight.dtype)  # +0.0: one bit pattern, never -0.0
        out = torch.where(self.mask(weight, importance), weight, zero)
        return {"weight": out}, _pruned_meta(weight, out), {}

    def reconstruct(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        return tensors["weight"].reshape(meta["shape"]).to(getattr(torch, meta["dtype"]))
