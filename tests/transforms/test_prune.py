"""Magnitude pruning: exact counts, the largest survive, N:M patterns, zeros stay in the dense tensor."""

from __future__ import annotations

import pytest
import torch

from llmcomp_hf.transforms import MagnitudePrune, NMPrune


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.731, 0.99])
def test_unstructured_fraction_exact(weight: torch.Tensor, sparsity: float) -> None:
    out = MagnitudePrune(sparsity=sparsity).apply(weight)
    pruned = out.tensors["weight"]
    k = round(sparsity * weight.numel())
    assert int((pruned == 0).sum()) == k == out.meta["zeros"] == out.meta["pruned"]
    kept = pruned != 0
    if 0 < k < weight.numel():
        assert float(weight[~kept].abs().max()) <= float(weight[kept].abs().min())
    assert torch.equal(pruned[kept], weight[kept])
    # zeros are +0.0 (one bit pattern for the entropy coder), never -0.0
    assert not bool(torch.signbit(pruned[~kept]).any())


def test_ties_are_deterministic() -> None:
    w = torch.ones(4, 8)
    out = MagnitudePrune(sparsity=0.25).apply(w).tensors["weight"]
    assert int((out == 0).sum()) == 8 and bool((out.reshape(-1)[:8] == 0).all())


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (1, 2)])
def test_nm_pattern(weight: torch.Tensor, n: int, m: int) -> None:
    out = NMPrune(n=n, m=m).apply(weight)
    pruned = out.tensors["weight"]
    runs_w, runs_p = weight.reshape(-1, m), pruned.reshape(-1, m)
    assert bool(((runs_p != 0).sum(1) == n).all())
    # the kept ones are the n largest magnitudes of their run
    kth = runs_w.abs().sort(1, descending=True).values[:, n - 1 : n]
    assert bool((runs_p[runs_p != 0].abs() >= kth.expand(-1, m)[runs_p != 0]).all())
    assert out.meta["zeros"] == weight.numel() * (m - n) // m
    assert not bool(torch.signbit(pruned[pruned == 0]).any())


def test_nm_runs_lie_along_the_input_dim() -> None:
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0, 8.0, 7.0, 6.0, 5.0]])
    out = NMPrune(2, 4).apply(w).tensors["weight"]
    assert out.tolist() == [[0.0, 0.0, 3.0, 4.0, 8.0, 7.0, 0.0, 0.0]]


def test_nm_needs_divisible_last_dim() -> None:
    with pytest.raises(ValueError, match="MagnitudePrune"):
        NMPrune(2, 4).apply(torch.ones(4, 6))
    with pytest.raises(ValueError, match=">= 2 dims"):
        NMPrune(2, 4).apply(torch.ones(8))


def test_pruning_keeps_dtype_bits() -> None:
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    out = NMPrune(2, 4).apply(w)
    assert out.tensors["weight"].dtype == torch.bfloat16 and out.bits_per_weight == 16
    kept = out.tensors["weight"] != 0
    assert torch.equal(out.reconstruct()[kept], w[kept])
