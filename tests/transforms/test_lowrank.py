"""Low-rank factorisation: ranks, Eckart-Young optimality, randomized variants, residuals."""

from __future__ import annotations

import pytest
import torch

from llmcomp_hf.transforms import LowRank, NF4Quant, UniformQuant, randomized_svd
from llmcomp_hf.transforms.lowrank import rank_for_energy


def _low_rank_plus_noise(m: int, n: int, r: int, noise: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    decay = torch.logspace(0, -1, r)
    a = torch.randn(m, r, generator=gen) * decay @ torch.randn(r, n, generator=gen)
    return a + noise * torch.randn(m, n, generator=gen)


@pytest.mark.parametrize("rank", [1, 7, 40])
def test_svd_error_is_discarded_energy(weight: torch.Tensor, rank: int) -> None:
    out = LowRank(rank=rank, factor_dtype="float32").apply(weight)
    assert out.tensors["left"].shape == (96, rank) and out.tensors["right"].shape == (rank, 256)
    assert out.meta["rank"] == rank
    s = torch.linalg.svdvals(weight.double())
    assert out.error.sq_err == pytest.approx(float(s[rank:].square().sum()), rel=1e-4)
    assert out.meta["energy_kept"] == pytest.approx(1 - out.error.rel_mse, abs=1e-5)


def test_rank_is_clipped_and_full_rank_is_near_exact(weight: torch.Tensor) -> None:
    out = LowRank(rank=1000, factor_dtype="float32").apply(weight)
    assert out.meta["rank"] == 96 and out.error.rel_mse < 1e-10
    assert LowRank.break_even_rank((96, 256)) == 69


@pytest.mark.parametrize("energy", [0.3, 0.8, 0.99])
def test_energy_selects_smallest_rank(weight: torch.Tensor, energy: float) -> None:
    out = LowRank(energy=energy, factor_dtype="float32").apply(weight)
    r = out.meta["rank"]
    e = torch.linalg.svdvals(weight.double()).square()
    frac = torch.cumsum(e, 0) / e.sum()
    assert float(frac[r - 1]) >= energy and (r == 1 or float(frac[r - 2]) < energy)
    assert rank_for_energy(torch.tensor([2.0, 1.0]), 0.8) == 1
    assert rank_for_energy(torch.tensor([2.0, 1.0]), 0.81) == 2


def test_randomized_matches_svd_on_decaying_spectrum() -> None:
    a = _low_rank_plus_noise(200, 300, 20, 1e-3)
    exact = LowRank(rank=20, factor_dtype="float32").apply(a).error.rel_mse
    fast = LowRank(rank=20, method="randomized", factor_dtype="float32").apply(a).error.rel_mse
    assert fast <= exact * 1.01 + 1e-9
    u, s, vh = randomized_svd(a, 5, oversample=5, power_iters=2, seed=0)
    assert u.shape == (200, 5) and s.shape == (5,) and vh.shape == (5, 300)
    assert torch.allclose(s, torch.linalg.svdvals(a)[:5], rtol=1e-3)
    assert torch.allclose(u.T @ u, torch.eye(5), atol=1e-4)


def test_random_projection_is_exact_on_exact_low_rank() -> None:
    a = _low_rank_plus_noise(64, 80, 6, 0.0)
    out = LowRank(rank=6, method="random_projection", factor_dtype="float32").apply(a)
    assert out.error.rel_mse < 1e-9
    noisy = _low_rank_plus_noise(64, 80, 6, 0.05)
    rp = LowRank(rank=6, method="random_projection", factor_dtype="float32").apply(noisy).error.rel_mse
    svd = LowRank(rank=6, factor_dtype="float32").apply(noisy).error.rel_mse
    assert svd <= rp


def test_seed_makes_randomized_deterministic(weight: torch.Tensor) -> None:
    cfg = LowRank(rank=8, method="randomized", seed=7)
    assert torch.equal(cfg.apply(weight).tensors["left"], cfg.apply(weight).tensors["left"])


def test_factor_dtypes(weight: torch.Tensor) -> None:
    for name, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        out = LowRank(rank=8, factor_dtype=name).apply(weight)
        assert out.tensors["left"].dtype == dtype and out.tensors["right"].dtype == dtype
        assert out.bits_per_weight == pytest.approx(8 * (96 + 256) * torch.finfo(dtype).bits / weight.numel())


def test_quantized_residual(weight: torch.Tensor) -> None:
    plain = LowRank(rank=16).apply(weight)
    with_res = LowRank(rank=16, residual=UniformQuant(bits=4, group_size=64)).apply(weight)
    assert {"residual.codes", "residual.scales"} <= set(with_res.tensors)
    # residual error is the residual quantizer's error: <= half its step per element
    assert with_res.error.rel_mse < plain.error.rel_mse / 20
    nf4 = LowRank(rank=16, residual=NF4Quant()).apply(weight)
    assert nf4.error.rel_mse < plain.error.rel_mse / 20


def test_rejects_vectors() -> None:
    with pytest.raises(ValueError, match="at least 2 dims"):
        LowRank(rank=2).apply(torch.ones(10))


def test_conv_like_weight_is_flattened() -> None:
    w = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    out = LowRank(rank=8, factor_dtype="float32").apply(w)
    assert out.tensors["right"].shape == (8, 27) and out.reconstruct().shape == w.shape
    assert out.error.rel_mse < 1e-10
