"""Non-uniform (codebook) quantization: NF4's fixed levels, and levels fitted by Lloyd-Max (1-D k-means).

Both scale each group by its absmax (stored rounded up, so normalised values lie in [-1, 1]), map each
value to the nearest level (codes uint8, the level's index; levels are sorted) and store the codebook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from llmcomp_hf.transforms.base import FLOAT_DTYPES, Encoded, check_choice, check_float, check_int, register
from llmcomp_hf.transforms.quantize import (
    GroupSize,
    Quantizer,
    _div,
    _restore,
    check_group_size,
    from_groups,
    group_len,
    store_scale,
    to_groups,
)


def nf4_levels() -> torch.Tensor:
    """The 16 NF4 levels (QLoRA): normal quantiles, 8 positive and 7 negative, plus 0, scaled to [-1, 1].

    The outermost quantile probability sits halfway between the 1/(2*15) and 1/(2*16) tails.
    """
    offset = 1.0 - (1.0 / 30 + 1.0 / 32) / 2

    def ppf(p: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)

    pos = ppf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -ppf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)])
    return (levels / levels.max()).sort().values.to(torch.float32)


def assign(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level for every element of ``x`` (``levels`` sorted ascending)."""
    mids = (levels[1:].to(torch.float64) + levels[:-1].to(torch.float64)) / 2
    return torch.bucketize(x.to(torch.float64), mids)


def _encode(weight: torch.Tensor, levels: torch.Tensor, group_size: GroupSize, scale_dtype: str,
            what: str) -> dict[str, torch.Tensor]:
    x = to_groups(weight, group_len(weight.shape, group_size))
    s = store_scale(x.abs().amax(1), scale_dtype, True, what)
    codes = assign(_div(x, s), levels).to(torch.uint8)
    return {"codes": from_groups(codes, weight.shape), "scales": s}


def _decode(tensors: dict[str, torch.Tensor], meta: dict[str, Any], levels: torch.Tensor,
            group_size: GroupSize) -> torch.Tensor:
    codes = to_groups(tensors["codes"], group_len(meta["shape"], group_size)).long()
    return _restore(levels.to(torch.float32)[codes] * tensors["scales"].to(torch.float32)[:, None], meta)


@register
@dataclass(frozen=True)
class NF4Quant(Quantizer):
    """NF4: the 16 fixed NF4 levels times the group absmax; codes 0..15 (7 is exactly 0)."""

    name: ClassVar[str] = "nf4"
    group_size: GroupSize = 64
    scale_dtype: str = "float16"

    def __post_init__(self) -> None:
        check_group_size("NF4Quant", self.group_size)
        check_choice("NF4Quant", "scale_dtype", self.scale_dtype, tuple(FLOAT_DTYPES))

    def _apply(self, weight: torch.Tensor, importance: torch.Tensor | None = None) -> Encoded:
        return _encode(weight, nf4_levels(), self.group_size, self.scale_dtype, "NF4Quant"), {}, {"codes": 4}

    def reconstruct(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        return _decode(tensors, meta, nf4_levels(), self.group_size)


def lloyd_max(x: torch.Tensor, k: int, iters: int, tol: float = 0.0,
              zero_level: bool = False) -> tuple[torch.Tensor, list[float]]:
    """Fit ``k`` sorted levels to the 1-D sample ``x`` by Lloyd's algorithm (float64).

    Returns the levels and the MSE after each assignment step, which never increases. Starts from the
    sample's quantiles; an empty cell keeps its level. With ``zero_level`` one level is pinned at 0.
    The sample is sorted once; cells are then index ranges, so an iteration costs O(k log n) through
    prefix sums instead of O(n log k).
    """
    xs = x.reshape(-1).to(torch.float64).sort().values
    n = xs.numel()
    csum = torch.cat([xs.new_zeros(1), torch.cumsum(xs, 0)])
    csq = torch.cat([xs.new_zeros(1), torch.cumsum(xs.square(), 0)])
    c = _initial_levels(xs[xs != 0] if zero_level and bool((xs != 0).any()) else xs, k - int(zero_level))
    if zero_level:
        c = torch.cat([c, c.new_zeros(1)]).sort().values
    history: list[float] = []
    for _ in range(iters + 1):
        # cell j holds mids[j-1] < x <= mids[j], i.e. sorted indices [bounds[j], bounds[j+1])
        mids = (c[1:] + c[:-1]) / 2
        bounds = torch.cat([torch.zeros(1, dtype=torch.long), torch.searchsorted(xs, mids, right=True),
                            torch.full((1,), n, dtype=torch.long)])
        cnt = (bounds[1:] - bounds[:-1]).to(torch.float64)
        sums = csum[bounds[1:]] - csum[bounds[:-1]]
        sq = csq[bounds[1:]] - csq[bounds[:-1]]
        mse = float((sq - 2 * c * sums + cnt * c.square()).sum().clamp(min=0)) / max(n, 1)
        history.append(mse)
        if len(history) > iters or (len(history) > 1 and history[-2] - mse <= tol * max(history[-2], 1e-300)):
            break
        pinned = torch.nonzero(c == 0)[0, 0] if zero_level else None
        c = torch.where(cnt > 0, sums / cnt.clamp(min=1), c)
        if pinned is not None:
            c[pinned] = 0.0
        c = c.sort().values
    return c, history


def _initial_levels(xs: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` distinct starting levels: mid-cell quantiles of the sorted sample, topped up evenly."""
    if k <= 0:
        return xs.new_zeros(0)
    n = xs.numel()
    pos = ((torch.arange(k, dtype=torch.float64) + 0.5) / k * n).long().clamp(max=n - 1)
    c = torch.unique(xs[pos])
    if c.numel() < k and float(xs[-1]) > float(xs[0]):  # ties: top up with evenly spaced levels
        merged = torch.unique(torch.cat([c, torch.linspace(float(xs[0]), float(xs[-1]), k, dtype=torch.float64)]))
        c = merged[torch.linspace(0, merged.numel() - 1, k).floor().long()] if merged.numel() > k else merged
    if c.numel() < k:  # (nearly) constant data: repeat the top level
        c = torch.cat([c, c[-1:].expand(k - c.numel())])
    return c.sort().values


@register
@dataclass(frozen=True)
class KMeansQuant(Quantizer):
    """Data-fitted levels (Lloyd-Max) per tensor, on values normalised by their group absmax.

    ``group_size="tensor"`` (default) fits the levels to the raw values (one scale). The fit uses at
    most ``max_fit_samples`` values (a seeded random subset; ``None`` = all); every value is then
    assigned to the nearest *stored* (rounded) level.
    """

    name: ClassVar[str] = "kmeans"
    levels: int = 16
    iters: int = 30
    group_size: GroupSize = "tensor"
    codebook_dtype: str = "float16"
    scale_dtype: str = "float16"
    zero_level: bool = False
    max_fit_samples: int | None = 1 << 20
    tol: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("KMeansQuant", "levels", self.levels, 2, 256, hint=" (codes are uint8)")
        check_int("KMeansQuant", "iters", self.iters, 0, 1000)
        check_group_size("KMeansQuant", self.group_size)
        check_choice("KMeansQuant", "codebook_dtype", self.codebook_dtype, ("float16", "float32"))
        check_choice("KMeansQuant", "scale_dtype", self.scale_dtype, tuple(FLOAT_DTYPES))
        check_choice("KMeansQuant", "zero_level", self.zero_level, (True, False))
        if self.max_fit_samples is not None:
            check_int("KMeansQuant", "max_fit_samples", self.max_fit_samples, 1024, 1 << 40, hint=" or None (all)")
        check_float("KMeansQuant", "tol", self.tol, 0.0, 1.0)
        check_int("KMeansQuant", "seed", self.seed, 0, (1 << 63) - 1)

    @property
    def exact_zero(self) -> bool:
        return self.zero_level

    def _apply(self, weight: torch.Tensor, importance: torch.Tensor | None = None) -> Encoded:
        x = to_groups(weight, group_len(weight.shape, self.group_size))
        s = store_scale(x.abs().amax(1), self.scale_dtype, True, "KMeansQuant")
        xn = from_groups(_div(x, s), weight.shape).reshape(-1)
        sample = xn
        if self.max_fit_samples is not None and xn.numel() > self.max_fit_samples:
            gen = torch.Generator().manual_seed(self.seed)
            sample = xn[torch.randperm(xn.numel(), generator=gen)[: self.max_fit_samples]]
        levels, history = lloyd_max(sample, self.levels, self.iters, self.tol, self.zero_level)
        codebook = levels.to(FLOAT_DTYPES[self.codebook_dtype]).sort().values
        codes = assign(xn, codebook).to(torch.uint8).reshape(weight.shape)
        meta = {"fit_mse": [float(f"{h:.6g}") for h in history]}
        packed = max(1, math.ceil(math.log2(self.levels)))
        return {"codes": codes, "codebook": codebook, "scales": s}, meta, {"codes": packed}

    def reconstruct(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        return _decode(tensors, meta, tensors["codebook"], self.group_size)
