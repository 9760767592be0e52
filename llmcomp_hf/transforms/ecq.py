"""Entropy-constrained uniform quantization: the user fixes the step (or a target error), not a bit width.

A fine uniform grid without clipping; the rate comes from entropy coding the integer codes. Optional
per-input-channel ``importance`` reshapes the steps column by column, and an optional per-output-channel
``row_importance`` row by row, to minimise the importance-weighted error at the same (high-rate) code
entropy. An optional input second moment
(``hessian``) picks the grid points with error feedback (gptq.py): same grid, same stored format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from llmcomp_hf.transforms.base import FLOAT_DTYPES, Encoded, check_choice, check_float, register
from llmcomp_hf.transforms.quantize import (
    GroupSize,
    Quantizer,
    _div,
    _restore,
    check_group_size,
    from_groups,
    group_counts,
    group_len,
    store_scale,
    to_groups,
)

MAX_INT16 = (1 << 14) - 1  # |q| bound for zigzag codes in int16
MAX_ZIGZAG = (1 << 30) - 1  # ... and in int32


def column_steps(importance: torch.Tensor, limit: float = 16.0) -> torch.Tensor:
    """Step multiplier per channel, ``(importance / geometric mean) ** -1/2``, clipped to
    ``[1 / limit, limit]`` and shifted so the clipped multipliers keep a geometric mean of 1 (used for
    input channels and, with ``row_importance``, output channels).

    Minimises ``sum_j importance_j * err_j^2`` at fixed ``sum log(step)`` (i.e. fixed high-rate entropy).
    """
    imp = importance.to(torch.float64)
    logs = imp.clamp(min=float(imp.max()) * 1e-12).log()
    x, bound = -(logs - logs.mean()) / 2, math.log(limit)
    lo, hi = -2 * bound, 2 * bound  # re-centre after clipping: mean(clip(x + mu)) = 0, by bisection
    for _ in range(60):
        mu = (lo + hi) / 2
        lo, hi = (mu, hi) if float((x + mu).clamp(-bound, bound).mean()) < 0 else (lo, mu)
    return torch.exp((x + (lo + hi) / 2).clamp(-bound, bound)).to(torch.float32)


def zigzag(q: torch.Tensor, dtype: torch.dtype = torch.int16) -> torch.Tensor:
    """Signed ints -> 0, -1, 1, -2, 2, ... -> 0, 1, 2, 3, 4, ... (as ``dtype``)."""
    qi = q.to(torch.int64)
    return ((qi << 1) ^ (qi >> 63)).to(dtype)


def unzigzag(z: torch.Tensor) -> torch.Tensor:
    zi = z.to(torch.int64)
    return (zi >> 1) ^ -(zi & 1)


@register
@dataclass(frozen=True)
class EntropyCodedQuant(Quantizer):
    """Uniform grid with a fixed relative step, meant to be entropy-coded (no clipping, no bit width).

    Each group's step is ``step * stat`` with ``stat`` the group RMS (``relative_to="rms"``) or absmax.
    Alternatively give ``target_rel_mse`` (``||w - w_hat||^2 / ||w||^2``; pass ``step=None``) and the
    step is searched. Codes are the signed integers ``q = round(w / step_g)``: int8 when
    ``|q| <= 127``, else int16 (int32 beyond ``|q| > 16383``) in zigzag order so a byte-plane coder
    sees small values. With
    ``importance`` the steps are also scaled per input channel (stored as ``col_steps``), by at most
    ``column_range`` either way; with ``row_importance`` per output channel (``row_steps``), by at most
    ``row_range``.
    """

    name: ClassVar[str] = "ecq"
    uses_importance: ClassVar[bool] = True
    uses_hessian: ClassVar[bool] = True
    uses_row_importance: ClassVar[bool] = True
    step: float | None = 0.25
    target_rel_mse: float | None = None
    relative_to: str = "rms"
    group_size: GroupSize = "tensor"
    scale_dtype: str = "float16"
    column_range: float = 16.0
    row_range: float = 2.0

    def __post_init__(self) -> None:
        if (self.step is None) == (self.target_rel_mse is None):
            raise ValueError("EntropyCodedQuant: set exactly one of step and target_rel_mse "
                             "(e.g. EntropyCodedQuant(step=None, target_rel_mse=1e-3))")
        if self.step is not None:
            check_float("EntropyCodedQuant", "step", self.step, 1e-4, 16.0)
        if self.target_rel_mse is not None:
            check_float("EntropyCodedQuant", "target_rel_mse", self.target_rel_mse, 1e-12, 0.5)
        check_choice("EntropyCodedQuant", "relative_to", self.relative_to, ("rms", "absmax"))
        check_group_size("EntropyCodedQuant", self.group_size)
        check_choice("EntropyCodedQuant", "scale_dtype", self.scale_dtype, tuple(FLOAT_DTYPES))
        check_float("EntropyCodedQuant", "column_range", self.column_range, 1.0, 1024.0)
        check_float("EntropyCodedQuant", "row_range", self.row_range, 1.0, 1024.0)

    def _stats(self, x: torch.Tensor, numel: int) -> torch.Tensor:
        if self.relative_to == "absmax":
            return x.abs().amax(1)
        ss = x.to(torch.float64).square().sum(1)
        return (ss / group_counts(numel, x.shape[1], x.shape[0])).sqrt().to(torch.float32)

    def _quantize(self, x: torch.Tensor, stat: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` already divided by the column multipliers -> (integer codes as float, stored scales)."""
        s = store_scale(stat * step, self.scale_dtype, False, "EntropyCodedQuant")
        return torch.round(_div(x, s)), s

    def _apply(self, weight: torch.Tensor, importance: torch.Tensor | None = None,
               hessian: torch.Tensor | None = None, row_importance: torch.Tensor | None = None) -> Encoded:
        g = group_len(weight.shape, self.group_size)
        x = to_groups(weight, g)
        stat = self._stats(x, weight.numel())
        tensors: dict[str, torch.Tensor] = {}
        dtype = FLOAT_DTYPES[self.scale_dtype]
        if importance is not None:
            tensors["col_steps"] = column_steps(importance, self.column_range).to(dtype)
        if row_importance is not None:
            tensors["row_steps"] = column_steps(row_importance, self.row_range).to(dtype)
        mult = _multipliers(tensors, weight.shape, g)
        if mult is not None:
            x = x / mult
        step = self.step if self.step is not None else self._search_step(x, stat, mult)
        q, s = self._quantize(x, stat, step)
        if hessian is not None:
            from llmcomp_hf.transforms.gptq import error_feedback_codes

            steps = s.to(torch.float64)[:, None] * (mult.to(torch.float64) if mult is not None else 1.0)
            steps = from_groups(steps.expand(x.shape), weight.shape)
            q = to_groups(error_feedback_codes(weight, steps, hessian).to(torch.float32), g)
        qmin, qmax = int(q.min()), int(q.max())
        peak = max(-qmin, qmax)
        if peak > MAX_ZIGZAG:
            raise ValueError(f"EntropyCodedQuant: step {step:.3g} gives codes up to {peak}, beyond "
                             f"+-{MAX_ZIGZAG}; use a larger step, relative_to='absmax' or smaller groups")
        wide = peak > 127
        codes = zigzag(q, torch.int16 if peak <= MAX_INT16 else torch.int32) if wide else q.to(torch.int8)
        tensors.update({"codes": from_groups(codes, weight.shape), "scales": s})
        packed = max(1, math.ceil(math.log2(qmax - qmin + 1))) if qmax > qmin else 1
        meta = {"step": float(step), "zigzag": wide, **({"error_feedback": True} if hessian is not None else {})}
        return tensors, meta, {"codes": packed}

    def _search_step(self, x: torch.Tensor, stat: torch.Tensor, mult: torch.Tensor | None) -> float:
        """Relative step whose quantization error hits ``target_rel_mse`` (high-rate start, then refine)."""
        target = float(self.target_rel_mse)  # type: ignore[arg-type]
        m64 = mult.to(torch.float64) if mult is not None else torch.ones((), dtype=torch.float64)
        w64 = x.to(torch.float64) * m64
        norm = float(w64.square().sum())
        if norm == 0:
            return 1.0
        counts = group_counts(int(x.numel()), x.shape[1], x.shape[0])  # padding is 0: counts only scale the start
        stat_sq = float((stat.to(torch.float64).square() * counts).sum())
        step = math.sqrt(12 * target * norm / max(stat_sq, 1e-300))
        for _ in range(10):
            q, s = self._quantize(x, stat, step)
            err = float((w64 - q.to(torch.float64) * s.to(torch.float64)[:, None] * m64).square().sum()) / norm
            if err == 0 or abs(err / target - 1) < 2e-3:
                break
            step *= min(4.0, max(0.25, math.sqrt(target / err)))
        return min(max(step, 1e-4), 16.0)

    def reconstruct(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        codes = tensors["codes"]
        q = unzigzag(codes) if meta["zigzag"] else codes
        g = group_len(meta["shape"], self.group_size)
        out = to_groups(q, g).to(torch.float32) * tensors["scales"].to(torch.float32)[:, None]
        mult = _multipliers(tensors, meta["shape"], g)
        if mult is not None:
            out = out * mult
        return _restore(out, meta)


def _multipliers(tensors: dict[str, torch.Tensor], shape: Any, g: int) -> torch.Tensor | None:
    """Per-element step multipliers ``row_steps[i] * col_steps[j]`` in group layout, or None without either."""
    cols, rows = tensors.get("col_steps"), tensors.get("row_steps")
    if cols is None and rows is None:
        return None
    n_out, n_in = int(shape[0]), math.prod(int(d) for d in shape[1:])
    c = cols.to(torch.float32).reshape(1, n_in) if cols is not None else torch.ones(1, n_in)
    r = rows.to(torch.float32).reshape(n_out, 1) if rows is not None else torch.ones(n_out, 1)
    return to_groups((r * c).reshape(-1), g, fill=1.0)
