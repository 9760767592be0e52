"""Error-feedback rounding onto a fixed grid (GPTQ/OBQ column order) for a Linear weight ``[out, in]``.

With ``H = E[x x^T]`` the input second moment, the output error of ``y = W x`` is
``tr(dW H dW^T)``. Rounding column ``j`` leaves an error ``e_j``; the optimal correction of the
columns not yet rounded is ``-e_j / U_jj * U_j,j+1:`` with ``U`` the upper Cholesky factor of
``H^-1`` (the OBQ update, columns in natural order as in GPTQ). The grid itself (per-element step)
is given: only which grid point each weight takes changes, so the stored format is the plain one.
"""

from __future__ import annotations

import torch

DAMP = 0.01  # added to H's diagonal, relative to its mean: keeps the Cholesky factorisation stable
BLOCK = 128  # columns updated lazily together (same result as one at a time, fewer passes over W)


def inverse_cholesky(hessian: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1`` (float64); dead inputs get a unit diagonal."""
    h = hessian.to(torch.float64).clone()
    dead = h.diagonal() <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    h.diagonal().add_(damp * float(h.diagonal().mean().clamp(min=1e-30)))
    h.diagonal()[dead] += 1.0
    inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inv, upper=True)


def error_feedback_codes(weight: torch.Tensor, steps: torch.Tensor, hessian: torch.Tensor,
                         damp: float = DAMP, block: int = BLOCK) -> torch.Tensor:
    """Integer codes (as float64) of ``weight`` on the grid ``steps`` (same shape, per element), chosen
    column by column with error feedback under ``hessian`` (``[in, in]``)."""
    if weight.dim() != 2 or steps.shape != weight.shape or hessian.shape != (weight.shape[1],) * 2:
        raise ValueError(f"error feedback needs a 2-D weight [out, in], per-element steps of the same shape and an "
                         f"[in, in] input second moment; got {tuple(weight.shape)}, {tuple(steps.shape)}, "
                         f"{tuple(hessian.shape)}")
    w = weight.to(torch.float64).clone()
    d = steps.to(torch.float64)
    u = inverse_cholesky(hessian, damp)
    n = w.shape[1]
    codes = torch.empty_like(w)
    for a in range(0, n, block):
        b = min(a + block, n)
        err = torch.empty((w.shape[0], b - a), dtype=torch.float64)
        for j in range(a, b):
            q = torch.round(w[:, j] / d[:, j])
            codes[:, j] = q
            e = (w[:, j] - q * d[:, j]) / u[j, j]
            err[:, j - a] = e
            w[:, j + 1:b] -= e[:, None] * u[j, j + 1:b][None, :]
        if b < n:
            w[:, b:] -= err @ u[a:b, b:]
    return codes


__all__ = ["error_feedback_codes", "inverse_cholesky"]
