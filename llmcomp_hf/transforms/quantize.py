"""Uniform scalar quantization: fixed bit width (group-wise, symmetric/asymmetric) and entropy-constrained.

Groups are runs of ``group_size`` consecutive elements of the row-major weight (so, when the last
dimension is a multiple of ``group_size``, groups lie inside rows along the input dim);
``"channel"`` means one group per row (``shape[0]``), ``"tensor"`` one group for the whole tensor.
Codes keep the weight's shape; side info (scales, zero points) has one entry per group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import torch

from llmcomp_hf.transforms.base import (
    FLOAT_DTYPES,
    Transform,
    check_choice,
    check_float,
    check_int,
    register,
)

GroupSize = Union[int, str]
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

    def _apply(self, weight: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, int]]:
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


# -- entropy-constrained: fix the step, not the bit width ------------------------------------------

MAX_ZIGZAG = (1 << 14) - 1  # |q| bound so that zigzag codes fit int16


@register
@dataclass(frozen=True)
class EntropyCodedQuant(Quantizer):
    """Uniform grid with a fixed relative step, meant to be entropy-coded (no clipping, no bit width).

    Each group's step is ``step * stat`` with ``stat`` the group RMS (``relative_to="rms"``) or absmax.
    Alternatively give ``target_rel_mse`` (``||w - w_hat||^2 / ||w||^2``) and the step is searched.
    Codes are the signed integers ``q = round(w / step_g)``: int8 when ``|q| <= 127``, else int16 in
    zigzag order (``0, -1, 1, -2, ...`` -> ``0, 1, 2, 3, ...``) so a byte-plane coder sees small values.
    """

    name: ClassVar[str] = "ecq"
    step: float | None = 0.25
    target_rel_mse: float | None = None
    relative_to: str = "rms"
    group_size: GroupSize = "tensor"
    scale_dtype: str = "float16"

    def __post_init__(self) -> None:
        if (self.step is None) == (self.target_rel_mse is None):
            raise ValueError("EntropyCodedQuant: set exactly one of step and target_rel_mse "
                             "(e.g. EntropyCodedQuant(step=None, target_rel_mse=1e-3))")
        if self.step is not None:
            check_float("EntropyCodedQuant", "step", self.step, 1e-4, 16.0, lo_open=False)
        if self.target_rel_mse is not None:
            check_float("EntropyCodedQuant", "target_rel_mse", self.target_rel_mse, 1e-12, 0.5)
        check_choice("EntropyCodedQuant", "relative_to", self.relative_to, ("rms", "absmax"))
        check_group_size("EntropyCodedQuant", self.group_size)
        check_choice("EntropyCodedQuant", "scale_dtype", self.scale_dtype, tuple(FLOAT_DTYPES))

    def _stats(self, x: torch.Tensor, numel: int) -> torch.Tensor:
        if self.relative_to == "absmax":
            return x.abs().amax(1)
        ss = x.to(torch.float64).square().sum(1)
        return (ss / group_counts(numel, x.shape[1], x.shape[0])).sqrt().to(torch.float32)

    def _quantize(self, x: torch.Tensor, stat: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor]:
        s = store_scale(stat * step, self.scale_dtype, False, "EntropyCodedQuant")
        return torch.round(_div(x, s)), s

    def _apply(self, weight: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, int]]:
        x = to_groups(weight, group_len(weight.shape, self.group_size))
        stat = self._stats(x, weight.numel())
        step = self.step if self.step is not None else self._search_step(x, stat)
        q, s = self._quantize(x, stat, step)
        qmin, qmax = int(q.min()), int(q.max())
        if max(-qmin, qmax) > MAX_ZIGZAG:
            raise ValueError(f"EntropyCodedQuant: step {step:.3g} gives codes up to {max(-qmin, qmax)}, beyond "
                             f"int16's +-{MAX_ZIGZAG}; use a larger step, relative_to='absmax' or smaller groups")
        zigzag = max(-qmin, qmax) > 127
        if zigzag:
            qi = q.to(torch.int32)
            codes = ((qi << 1) ^ (qi >> 31)).to(torch.int16)
        else:
            codes = q.to(torch.int8)
        packed = max(1, math.ceil(math.log2(qmax - qmin + 1))) if qmax > qmin else 1
        meta = {"step": float(step), "zigzag": zigzag}
        return {"codes": from_groups(codes, weight.shape), "scales": s}, meta, {"codes": packed}

    def _search_step(self, x: torch.Tensor, stat: torch.Tensor) -> float:
        """Relative step whose quantization error hits ``target_rel_mse`` (high-rate start, then refine)."""
        target = float(self.target_rel_mse)  # type: ignore[arg-type]
        x64 = x.to(torch.float64)
        norm = float(x64.square().sum())
        if norm == 0:
            return 1.0
        counts = group_counts(int(x.numel()), x.shape[1], x.shape[0])  # padding is 0: counts only scale the start
        stat_sq = float((stat.to(torch.float64).square() * counts).sum())
        step = math.sqrt(12 * target * norm / max(stat_sq, 1e-300))
        for _ in range(8):
            q, s = self._quantize(x, stat, step)
            err = float((x64 - q.to(torch.float64) * s.to(torch.float64)[:, None]).square().sum()) / norm
            if err == 0 or abs(err / target - 1) < 2e-3:
                break
            step *= min(4.0, max(0.25, math.sqrt(target / err)))
        return min(max(step, 1e-4), 16.0)

    def reconstruct(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        codes = tensors["codes"]
        if meta["zigzag"]:
            z = codes.to(torch.int32)
            codes = (z >> 1) ^ -(z & 1)
        q = to_groups(codes, group_len(meta["shape"], self.group_size)).to(torch.float32)
        return _restore(q * tensors["scales"].to(torch.float32)[:, None], meta)
