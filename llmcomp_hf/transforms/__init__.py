"""Lossy transforms: quantize, reduce rank, prune — each to standard tensors a later step entropy-codes.

Every transform is a frozen, validated, JSON-serialisable config::

    t = UniformQuant(bits=4, group_size=64).apply(weight)   # -> Transformed
    t.tensors        # {"codes": uint8, "scales": float16}  (what gets stored)
    t.meta           # small JSON-serialisable dict (includes the config)
    t.error.rel_mse  # measured weight-space error
    w_hat = reconstruct(t.tensors, t.meta)

Stages compose with :class:`Pipeline` (prune -> low-rank -> quantize). Configs round-trip through
``to_dict``/``Transform.from_dict`` (and JSON).

Calibration-aware use: ``apply(weight, importance=...)`` takes a per-input-channel importance (mean
squared activation, ``llmcomp_hf.quality.input_importance``) in EntropyCodedQuant (column steps) and
the pruners (Wanda scores); :func:`allocate_steps` spreads ECQ steps over tensors by measured
sensitivity (``llmcomp_hf.quality.tensor_sensitivity``).
"""

from __future__ import annotations

from llmcomp_hf.transforms.allocate import allocate_steps
from llmcomp_hf.transforms.base import (
    Transform,
    Transformed,
    WeightError,
    config_from_dict,
    known_transforms,
    reconstruct,
)
from llmcomp_hf.transforms.codebook import KMeansQuant, NF4Quant, lloyd_max, nf4_levels
from llmcomp_hf.transforms.ecq import EntropyCodedQuant
from llmcomp_hf.transforms.lowrank import LowRank, randomized_svd
from llmcomp_hf.transforms.pipeline import Pipeline
from llmcomp_hf.transforms.prune import MagnitudePrune, NMPrune
from llmcomp_hf.transforms.quantize import Quantizer, UniformQuant

__all__ = [
    "EntropyCodedQuant",
    "KMeansQuant",
    "LowRank",
    "MagnitudePrune",
    "NF4Quant",
    "NMPrune",
    "Pipeline",
    "Quantizer",
    "Transform",
    "Transformed",
    "UniformQuant",
    "WeightError",
    "allocate_steps",
    "config_from_dict",
    "known_transforms",
    "lloyd_max",
    "nf4_levels",
    "randomized_svd",
    "reconstruct",
]
