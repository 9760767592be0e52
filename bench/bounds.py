"""Order-0 entropy bounds of bench/codec_minilm.py, per model view (tables not counted)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from bench.codec_minilm import Model

BLOCK = 65536  # elements per block, the codec's default


def format_planes(t: torch.Tensor) -> list[np.ndarray]:
    """The codec's byte planes (docs/format.md): exponent / sign+mantissa split for floats."""
    if t.element_size() == 2:
        w = t.reshape(-1).view(torch.int16).numpy().view(np.uint16)
        return [((w >> 7) & 0xFF).astype(np.uint8), (((w >> 8) & 0x80) | (w & 0x7F)).astype(np.uint8)]
    w = t.reshape(-1).view(torch.int32).numpy().view(np.uint32)
    return [((w >> 23) & 0xFF).astype(np.uint8), (((w >> 24) & 0x80) | ((w >> 16) & 0x7F)).astype(np.uint8),
            ((w >> 8) & 0xFF).astype(np.uint8), (w & 0xFF).astype(np.uint8)]


def entropy_bits(counts: np.ndarray) -> float:
    """Order-0 information content in bits of symbols with these counts (per row, summed)."""
    counts = np.atleast_2d(counts).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, counts * np.log2(totals / np.where(counts > 0, counts, 1)), 0.0)
    return float(terms.sum())


def bounds(m: Model) -> dict[str, float]:
    """Order-0 bounds as ratios (tables not counted): one table for the whole model, one per
    tensor, one per 64K-element block; each plane of the format gets its own table."""
    planes = [format_planes(t) for t in m.tensors]
    n_planes = len(planes[0])
    model = sum(entropy_bits(np.bincount(np.concatenate([p[j] for p in planes]), minlength=256))
                for j in range(n_planes))
    per_tensor = sum(entropy_bits(np.bincount(p[j], minlength=256)) for p in planes for j in range(n_planes))
    per_block = 0.0
    for p in planes:
        nb = -(-p[0].size // BLOCK)
        blk = np.arange(p[0].size) // BLOCK
        for j in range(n_planes):
            per_block += entropy_bits(np.bincount(blk * 256 + p[j], minlength=nb * 256).reshape(nb, 256))
    out = {"planes, one table (model)": model, "planes, per tensor": per_tensor, "planes, per 64K block": per_block}
    if m.bits == 16:  # the whole 16-bit value as one symbol: what a joint model could reach
        out["16-bit value, per tensor"] = sum(
            entropy_bits(np.bincount(t.reshape(-1).view(torch.int16).numpy().view(np.uint16), minlength=65536))
            for t in m.tensors)
    return {k: v / 8 / m.nbytes for k, v in out.items()}


