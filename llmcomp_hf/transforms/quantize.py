"""Uniform scalar quantization: fixed bit width (group-wise, symmetric/asymmetric) and entropy-constrained.

Groups are runs of ``group_size`` consecutive elements of the row-major weight (so, when the last
dimension is a multiple of ``group_size``, groups lie inside rows along the input dim);
``"channel"`` means one group per row (``shape[0]``), ``"tensor"`` one group for the whole tensor.
Codes keep the weight's shape; side info (scales, zero points) has one entry per group.
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
    check_int,
    register,
)

GroupSize = int | str
MAX_GROUP = 1 << 24


class Quantizer(Transform):
    """Marker base of the quantizers: they map a float tensor to codes plus side info."""

    @property
    def exact_zero(self) -> bool:
        """True when an input 0 always reconstructs to exactly 0 (needed after pruning)."""
        return True


# -- group helpers -----------------------------------------------------------------------------------

def check_group_size(cls: str, value: Any) -> None:
    if isinstance(value, str):
        check_choice(cls, "group_size", value, ("channel", "tensor"))
    else:
        check_int(cls, "group_size", value, 2, MAX_GROUP, hint=' (or "channel" / "tensor")')


def group_len(shape: tuple[int, ...] | list[int], group_size: GroupSize) -> int:
    """Elements per group for a tensor of ``shape``."""
    numel = math.prod(shape)
    if group_size == "tensor" or (group_size == "channel" and len(shape) < 2):
        return max(numel, 1)
    if group_size == "channel":
        return max(numel // shape[0], 1)
    return int(group_size)


def to_groups(w: torch.Tensor, g: int, fill: float = 0) -> torch.Tensor:
    """Flatten ``w`` row-major into ``[n_groups, g]``, padding the tail with ``fill``."""
    flat = w.reshape(-1)
    pad = -flat.numel() % g
    if pad:
        flat = torch.cat([flat, flat.new_full((pad,), fill)])
    return flat.reshape(-1, g)


def from_groups(x: torch.Tensor, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    """Inverse of :func:`to_groups`: drop the padding and restore ``shape``."""
    return x.reshape(-1)[: math.prod(shape)].reshape(tuple(shape))


def group_counts(numel: int, g: int, n_groups: int) -> torch.Tensor:
    """Valid (unpadded) elements per group."""
    counts = torch.full((n_groups,), g, dtype=torch.float64)
    counts[-1] = numel - (n_groups - 1) * g
    return counts


def store_scale(s: torch.Tensor, dtype: str, round_up: bool, what: str) -> torch.Tensor:
    """Cast non-negative fp32 scales to ``dtype``; with ``round_up`` the stored value is >= ``s``.

    Quantizing with the *stored* scale keeps encoder and decoder on the same grid; rounding up means
    the grid still spans the group's range, so no value is clipped by more than half a step.
    """
    out = s.to(FLOAT_DTYPES[dtype])
    if round_up:
        low = out.to(torch.float32) < s
        if bool(low.any()):
            out[low] = torch.nextafter(out[low], torch.full_like(out[low], math.inf))
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{what}: a scale overflows {dtype} (weights too large); use scale_dtype='float32'")
    return out


def _div(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x / s per group row, 0 where the scale is 0 (all-zero groups)."""
    s = s.to(torch.float32)[:, None]
    return torch.where(s > 0, x / torch.where(s > 0, s, 1.0), 0.0)


def _restore(x: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    return from_groups(x, meta["shape"]).to(getattr(torch, meta["dtype"]))


# -- fixed bit width ---------------------------------------------------------------------------------

@register
@dataclass(frozen=True)
class UniformQuant(Quantizer):
    """Group-wise uniform quantization to ``bits`` bits; codes uint8, scales in ``scale_dtype``.

    Symmetric: levels ``q * scale`` with ``|q| <= 2^(b-1) - 1`` (0 exact), scale = absmax / qmax,
    stored code ``q + 2^(b-1)`` (centred, so the entropy coder sees a peak). Asymmetric: codes
    ``0 .. 2^b - 1``, an integer zero point per group (uint8; 0 stays exact), range extended to 0.
    Every element's error is at most half its group's step.
    """

    name: ClassVar[str] = "uniform"
    bits: int = 8
    group_size: GroupSize = 128
    symmetric: bool = True
    scale_dtype: str = "float16"

    def __post_init__(self) -> None:
        check_int("UniformQuant", "bits", self.bits, 2, 8, hint=" (for finer grids use EntropyCodedQuant)")
        check_group_size("UniformQuant", self.group_size)
        check_choice("UniformQuant", "symmetric", self.symmetric, (True, False))
        check_choice("UniformQuant", "scale_dtype", self.scale_dtype, tuple(FLOAT_DTYPES))

    def _apply(self, weight: torch.Tensor, importance: torch.Tensor | None = None) -> Encoded:
        x = to_groups(weight, group_len(weight.shape, self.group_size))
        if self.symmetric:
            qmax = (1 << (self.bits - 1)) - 1
            s = store_scale(x.abs().amax(1) / qmax, self.scale_dtype, True, "UniformQuant")
            q = torch.round(_div(x, s)).clamp_(-qmax, qmax) + (1 << (self.bits - 1))
            tensors = {"scales": s}
        else:
            qmax = (1 << self.bits) - 1
            lo, hi = x.amin(1).clamp(max=0), x.amax(1).clamp(min=0)
            s = store_scale((hi - lo) / qmax, self.scale_dtype, True, "UniformQuant")
            zp = torch.round(_div(-lo[:, None], s)).clamp_(0, qmax)
            q = (torch.round(_div(x, s)) + zp).clamp_(0, qmax)
            tensors = {"scales": s, "zero_points": zp.reshape(-1).to(torch.uint8)}
        tensors["codes"] = from_groups(q.to(torch.uint8), weight.shape)
        return tensors, {}, {"codes": self.bits}

    def reconstruct(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        g = group_len(meta["shape"], self.group_size)
        q = to_groups(tensors["codes"], g).to(torch.float32)
        if self.symmetric:
            q = q - (1 << (self.bits - 1))
        else:
            q = q - tensors["zero_points"].to(torch.float32)[:, None]
        return _restore(q * tensors["scales"].to(torch.float32)[:, None], meta)
