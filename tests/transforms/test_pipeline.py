"""Composition: prune -> low-rank -> quantize."""

from __future__ import annotations

import json

import pytest
import torch

from llmcomp_hf.transforms import (
    EntropyCodedQuant,
    KMeansQuant,
    LowRank,
    MagnitudePrune,
    NF4Quant,
    NMPrune,
    Pipeline,
    UniformQuant,
    reconstruct,
)


@pytest.mark.parametrize("quant", [UniformQuant(bits=4, group_size=64), UniformQuant(bits=3, symmetric=False),
                                   NF4Quant(), EntropyCodedQuant(step=0.3), KMeansQuant(zero_level=True)])
@pytest.mark.parametrize("prune", [NMPrune(2, 4), MagnitudePrune(0.5)])
def test_pruned_zeros_map_exactly(weight: torch.Tensor, prune, quant) -> None:
    out = Pipeline(stages=(prune, quant)).apply(weight)
    zeros = prune.apply(weight).tensors["weight"] == 0
    w_hat = out.reconstruct()
    assert bool((w_hat[zeros] == 0).all())
    if isinstance(prune, NMPrune):  # the N:M pattern survives quantization (non-zeros may round to 0)
        assert bool(((w_hat.reshape(-1, 4) != 0).sum(1) <= 2).all())
    assert set(out.tensors) == {f"weight.{k}" for k in quant.apply(weight).tensors}


def test_prune_then_quantize_error_decomposes(weight: torch.Tensor) -> None:
    prune_only = Pipeline(stages=(NMPrune(2, 4),)).apply(weight)
    both = Pipeline(stages=(NMPrune(2, 4), UniformQuant(bits=8))).apply(weight)
    assert both.error.rel_mse == pytest.approx(prune_only.error.rel_mse, rel=0.02)
    assert prune_only.tensors.keys() == {"weight"}


def test_lowrank_then_quantize_factors(weight: torch.Tensor) -> None:
    out = Pipeline(stages=(LowRank(rank=16), UniformQuant(bits=8, group_size=64))).apply(weight)
    assert {"left.codes", "left.scales", "right.codes", "right.scales"} == set(out.tensors)
    assert out.tensors["left.codes"].shape == (96, 16)
    plain = LowRank(rank=16).apply(weight)
    assert out.error.rel_mse == pytest.approx(plain.error.rel_mse, rel=0.01)
    assert out.packed_bits_per_weight < plain.bits_per_weight / 1.9


def test_lowrank_residual_inside_pipeline(weight: torch.Tensor) -> None:
    cfg = Pipeline(stages=(LowRank(rank=8, residual=UniformQuant(bits=4)),))
    out = cfg.apply(weight)
    assert "residual.codes" in out.tensors and "left" in out.tensors
    assert torch.equal(reconstruct(out.tensors, json.loads(json.dumps(out.meta))), out.reconstruct())


def test_single_stage_pipeline_equals_stage(weight: torch.Tensor) -> None:
    q = UniformQuant(bits=4, group_size=32)
    assert torch.equal(Pipeline(stages=(q,)).apply(weight).reconstruct(), q.apply(weight).reconstruct())
