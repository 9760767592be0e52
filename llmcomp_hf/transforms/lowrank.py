"""Low-rank factorisation ``W ~ left @ right``: truncated SVD, randomized SVD, or a random projection.

A weight of shape ``[m, ...]`` is treated as the matrix ``[m, n]`` (``n`` = the other dims). SVD
factors are balanced (``left = U sqrt(S)``, ``right = sqrt(S) V^T``) so that fp16/bf16 storage keeps
both in range. An optional quantized residual ``W - left @ right`` (computed with the *stored*
factors, so it also absorbs their rounding) is stored under ``residual.*``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from llmcomp_hf.transforms.base import (
    FLOAT_DTYPES,
    Encoded,
    Transform,
    check_choice,
    check_float,
    check_int,
    register,
)
from llmcomp_hf.transforms.quantize import Quantizer

METHODS = ("svd", "randomized", "random_projection")


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def _unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """Smallest rank whose singular values keep at least ``energy`` of ``sum(s^2)``."""
    e = s.to(torch.float64).square()
    total = float(e.sum())
    if total == 0:
        return 1
    kept = torch.cumsum(e, 0) / total
    return int(torch.searchsorted(kept, torch.tensor([energy * (1 - 1e-12)], dtype=torch.float64))[0]) + 1


def randomized_svd(a: torch.Tensor, rank: int, oversample: int, power_iters: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Halko-Martinsson-Tropp randomized SVD: Gaussian sketch, QR-stabilised power iterations."""
    m, n = a.shape
    k = min(rank + oversample, m, n)
    gen = torch.Generator().manual_seed(seed)
    omega = torch.randn(n, k, generator=gen, dtype=a.dtype).to(a.device)
    q = torch.linalg.qr(a @ omega).Q
    for _ in range(power_iters):
        q = torch.linalg.qr(a.T @ q).Q
        q = torch.linalg.qr(a @ q).Q
    ub, s, vh = torch.linalg.svd(q.T @ a, full_matrices=False)
    return (q @ ub)[:, :rank], s[:rank], vh[:rank]


@register
@dataclass(frozen=True)
class LowRank(Transform):
    """Rank-``rank`` factors (or the smallest rank keeping ``energy`` of the squared singular values).

    ``method``: ``"svd"`` (exact truncated SVD, optimal by Eckart-Young), ``"randomized"`` (Halko et
    al. with ``oversample`` extra columns and ``power_iters`` power iterations; fast for small ranks),
    ``"random_projection"`` (one Gaussian sketch: ``left`` = orthonormal basis of ``W @ Omega``,
    ``right = left^T W``; cheapest, least accurate). A rank above ``min(m, n)`` is clipped to it.
    ``residual``: optional quantizer config applied to ``W - left @ right``.
    """

    name: ClassVar[str] = "lowrank"
    rank: int | None = None
    energy: float | None = None
    method: str = "svd"
    factor_dtype: str = "float16"
    oversample: int = 8
    power_iters: int = 2
    seed: int = 0
    residual: Quantizer | None = None

    def __post_init__(self) -> None:
        if (self.rank is None) == (self.energy is None):
            raise ValueError("LowRank: set exactly one of rank and energy, e.g. LowRank(rank=64) or "
                             "LowRank(energy=0.9)")
        if self.rank is not None:
            check_int("LowRank", "rank", self.rank, 1, 1 << 20)
        if self.energy is not None:
            check_float("LowRank", "energy", self.energy, 0.0, 1.0, lo_open=True)
        check_choice("LowRank", "method", self.method, METHODS)
        if self.energy is not None and self.method != "svd":
            raise ValueError(f"LowRank: energy needs the full spectrum, so method must be 'svd' (got "
                             f"{self.method!r}); for {self.method!r} give a rank instead")
        check_choice("LowRank", "factor_dtype", self.factor_dtype, tuple(FLOAT_DTYPES))
        check_int("LowRank", "oversample", self.oversample, 0, 1 << 16)
        check_int("LowRank", "power_iters", self.power_iters, 0, 64)
        check_int("LowRank", "seed", self.seed, 0, (1 << 63) - 1)
        if self.residual is not None and not isinstance(self.residual, Quantizer):
            raise ValueError(f"LowRank.residual must be a quantizer config (UniformQuant, EntropyCodedQuant, "
                             f"NF4Quant, KMeansQuant) or None, got {type(self.residual).__name__}")

    def factorize(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Float ``[m, n]`` matrix -> (left ``[m, r]``, right ``[r, n]``) in float32, plus meta."""
        m, n = a.shape
        meta: dict[str, Any] = {}
        if self.method == "random_projection":
            r = min(int(self.rank), m, n)  # type: ignore[arg-type]
            gen = torch.Generator().manual_seed(self.seed)
            q = torch.linalg.qr(a @ torch.randn(n, r, generator=gen, dtype=a.dtype).to(a.device)).Q
            return q, q.T @ a, {"rank": r}
        if self.method == "svd":
            u, s, vh = torch.linalg.svd(a.to(torch.float64), full_matrices=False)
            r = rank_for_energy(s, self.energy) if self.energy is not None else min(int(self.rank), s.numel())
            kept = float(s[:r].square().sum() / s.square().sum()) if float(s.square().sum()) > 0 else 1.0
            meta["energy_kept"] = kept
            u, s, vh = u[:, :r], s[:r], vh[:r]
        else:
            r = min(int(self.rank), m, n)  # type: ignore[arg-type]
            u, s, vh = randomized_svd(a, r, self.oversample, self.power_iters, self.seed)
        root = s.sqrt().to(torch.float32)
        meta["rank"] = r
        return u.to(torch.float32) * root, root[:, None] * vh.to(torch.float32), meta

    def _apply(self, weight: torch.Tensor, importance: torch.Tensor | None = None) -> Encoded:
        if weight.dim() < 2:
            raise ValueError(f"LowRank needs a weight with at least 2 dims, got shape {tuple(weight.shape)}; "
                             "leave 1-D tensors (biases, norms) out")
        a = weight.reshape(weight.shape[0], -1)
        left, right, meta = self.factorize(a)
        dt = FLOAT_DTYPES[self.factor_dtype]
        tensors = {"left": left.to(dt), "right": right.to(dt)}
        packed: dict[str, int] = {}
        if self.residual is not None:
            approx = (tensors["left"].to(torch.float32) @ tensors["right"].to(torch.float32)).reshape(weight.shape)
            res = self.residual.apply(weight - approx, measure=False)
            tensors.update(_prefixed(res.tensors, "residual"))
            packed.update({f"residual.{k}": v for k, v in res.packed_bits.items()})
            meta["residual"] = res.meta
        return tensors, meta, packed

    def reconstruct(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        out = tensors["left"].to(torch.float32) @ tensors["right"].to(torch.float32)
        out = out.reshape(meta["shape"])
        if self.residual is not None:
            res = self.residual.reconstruct(_unprefixed(tensors, "residual"), meta["residual"])
            out = out + res.to(torch.float32)
        return out.to(getattr(torch, meta["dtype"]))

    @staticmethod
    def break_even_rank(shape: tuple[int, ...]) -> int:
        """Largest rank whose two factors hold fewer values than the dense matrix."""
        m, n = shape[0], math.prod(shape[1:])
        return max((m * n - 1) // (m + n), 0)
