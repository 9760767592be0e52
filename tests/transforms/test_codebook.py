"""NF4 and Lloyd-Max (k-means) codebook quantization."""

from __future__ import annotations

import pytest
import torch

from llmcomp_hf.transforms import KMeansQuant, MagnitudePrune, NF4Quant, Pipeline, lloyd_max, nf4_levels

# The NF4 table as published (QLoRA, appendix E) and shipped by bitsandbytes.
NF4_PUBLISHED = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]


def test_nf4_levels_match_published_table() -> None:
    levels = nf4_levels()
    assert levels.shape == (16,) and bool((levels[1:] > levels[:-1]).all())
    assert float(levels[7]) == 0.0
    assert torch.allclose(levels, torch.tensor(NF4_PUBLISHED), atol=1e-6, rtol=0)


@pytest.mark.parametrize("group_size", [64, 256, "channel"])
def test_nf4_codes_and_values(weight: torch.Tensor, group_size) -> None:
    out = NF4Quant(group_size=group_size).apply(weight)
    codes = out.tensors["codes"]
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15
    w_hat = out.reconstruct()
    # every value is a level times its group's absmax, and the chosen level is the nearest one
    g = weight.numel() // out.tensors["scales"].numel()
    s = out.tensors["scales"].float().repeat_interleave(g).reshape(weight.shape)
    assert torch.allclose(w_hat, nf4_levels()[codes.long()] * s)
    dist = (weight.reshape(-1, 1) / s.reshape(-1, 1) - nf4_levels()).abs()
    assert torch.equal(dist.argmin(1), codes.reshape(-1).long())
    assert 0.003 < out.error.rel_mse < 0.03
    assert NF4Quant().apply(torch.zeros(2, 64)).tensors["codes"].eq(7).all()


def test_lloyd_levels_sorted_and_mse_non_increasing(weight: torch.Tensor) -> None:
    levels, history = lloyd_max(weight.reshape(-1), 16, iters=40, tol=0.0)
    assert bool((levels[1:] >= levels[:-1]).all())
    assert all(b <= a * (1 + 1e-12) for a, b in zip(history, history[1:]))
    assert history[-1] < history[0]


def test_lloyd_finds_separated_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([-3.0, 0.5, 2.0, 7.0])
    x = centres[torch.randint(0, 4, (4000,), generator=gen)] + 0.01 * torch.randn(4000, generator=gen)
    levels, history = lloyd_max(x, 4, iters=50)
    assert torch.allclose(levels.float(), centres, atol=0.01)
    assert history[-1] < 2e-4


def test_lloyd_handles_ties_and_constant_data() -> None:
    x = torch.cat([torch.zeros(5000), torch.linspace(-1, 1, 100)])
    levels, _ = lloyd_max(x, 8, iters=10)
    assert levels.numel() == 8 and torch.unique(levels).numel() == 8
    levels, history = lloyd_max(torch.full((100,), 0.25), 4, iters=5)
    assert bool((levels == 0.25).all()) and history[-1] == 0.0


def test_kmeans_quant(weight: torch.Tensor) -> None:
    out = KMeansQuant(levels=16).apply(weight)
    book = out.tensors["codebook"]
    assert book.dtype == torch.float16 and book.shape == (16,) and bool((book[1:] >= book[:-1]).all())
    assert out.tensors["codes"].dtype == torch.uint8 and int(out.tensors["codes"].max()) < 16
    hist = out.meta["fit_mse"]
    assert all(b <= a * (1 + 1e-5) for a, b in zip(hist, hist[1:]))
    # fitted levels beat the fixed NF4 grid at the same group layout (per-tensor scale)
    assert out.error.rel_mse < NF4Quant(group_size="tensor").apply(weight).error.rel_mse
    errs = [KMeansQuant(levels=k).apply(weight).error.rel_mse for k in (4, 16, 64)]
    assert errs[0] > errs[1] > errs[2]


def test_kmeans_subsample_is_seeded(weight: torch.Tensor) -> None:
    cfg = KMeansQuant(levels=8, max_fit_samples=2048, seed=3)
    a, b = cfg.apply(weight), cfg.apply(weight)
    assert torch.equal(a.tensors["codebook"], b.tensors["codebook"])


def test_kmeans_zero_level_after_pruning(weight: torch.Tensor) -> None:
    out = Pipeline(stages=(MagnitudePrune(0.6), KMeansQuant(levels=16, zero_level=True))).apply(weight)
    pruned = MagnitudePrune(0.6).apply(weight).tensors["weight"] == 0
    assert bool((out.reconstruct()[pruned] == 0).all())
    assert 0.0 in out.tensors["weight.codebook"].tolist()


def _lloyd_reference(x: torch.Tensor, levels: torch.Tensor, iters: int) -> tuple[torch.Tensor, list[float]]:
    """Plain O(n k) Lloyd iterations (nearest level by brute force), the oracle for lloyd_max."""
    x = x.reshape(-1).double()
    c = levels.double().clone()
    history = []
    for _ in range(iters + 1):
        idx = (x[:, None] - c[None, :]).abs().argmin(1)
        history.append(float((x - c[idx]).square().mean()))
        if len(history) > iters:
            break
        for j in range(c.numel()):
            if bool((idx == j).any()):
                c[j] = x[idx == j].mean()
        c = c.sort().values
    return c, history


def test_lloyd_matches_brute_force_reference(weight: torch.Tensor) -> None:
    x = weight.reshape(-1)[:5000]
    fast, hist = lloyd_max(x, 8, iters=6, tol=-1.0)
    _, hist0 = lloyd_max(x, 8, iters=0)
    start = torch.sort(x.double()).values[((torch.arange(8) + 0.5) / 8 * 5000).long()]
    ref, ref_hist = _lloyd_reference(x, start, iters=6)
    assert hist0[0] == pytest.approx(ref_hist[0], rel=1e-9)
    assert torch.allclose(fast, ref, rtol=1e-9, atol=1e-12)
    assert hist == pytest.approx(ref_hist, rel=1e-7)
