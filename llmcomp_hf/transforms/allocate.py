"""Rate allocation across tensors: give each tensor the step that its measured sensitivity deserves.

High-rate model for an entropy-coded uniform grid with relative step ``c_i`` on tensor ``i``
(``n_i`` weights): rate ``R_i ~ n_i * (h_i - log2 c_i)``, relative error ``c_i^2 / 12``. With a
model-quality loss that is locally linear in each tensor's relative MSE, ``L ~ sum_i s_i c_i^2 / 12``
(``s_i`` = loss per unit of relative MSE, see ``llmcomp_hf.quality.tensor_sensitivity``), the
Lagrangian optimum is ``c_i ~ sqrt(n_i / s_i)`` — reverse water-filling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def allocate_steps(sensitivity: Mapping[str, float], numel: Mapping[str, int], step: float, *,
                   floor: float = 0.02, lo: float = 1e-4, hi: float = 4.0) -> dict[str, float]:
    """Per-tensor relative steps with the same total rate as ``step`` everywhere, but lower loss.

    Steps are scaled so their ``numel``-weighted geometric mean is ``step`` (equal high-rate entropy).
    Sensitivities below ``floor`` times the median are raised to it, so a tensor measured as harmless
    still gets a finite step; results are clipped to ``[lo, hi]``.
    """
    if set(sensitivity) != set(numel) or not sensitivity:
        raise ValueError("sensitivity and numel must name the same, non-empty set of tensors")
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"step must be a positive number, got {step!r}")
    values = sorted(max(float(v), 0.0) for v in sensitivity.values())
    median = values[len(values) // 2]
    if median <= 0:
        raise ValueError("the median sensitivity is 0: measure sensitivities with a larger probe error")
    s = {k: max(float(v), floor * median) for k, v in sensitivity.items()}
    raw = {k: math.sqrt(numel[k] / s[k]) for k in s}
    total = sum(numel.values())
    log_gm = sum(numel[k] * math.log(raw[k]) for k in raw) / total
    scale = step / math.exp(log_gm)
    return {k: min(max(raw[k] * scale, lo), hi) for k in raw}
