"""Embedding-quality metrics on synthetic embeddings (no model needed)."""

from __future__ import annotations

import pytest
import torch

from llmcomp_hf.quality import compare_embeddings, rankdata, spearman


def test_rankdata_average_ties() -> None:
    r = rankdata(torch.tensor([3.0, 1.0, 2.0, 2.0, 3.0, 3.0]))
    assert r.tolist() == [5.0, 1.0, 2.5, 2.5, 5.0, 5.0]


def test_spearman_known_values() -> None:
    x = torch.arange(10, dtype=torch.float64)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    ties = spearman(torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([5.0, 6, 7, 8, 7]))
    assert ties == pytest.approx(0.8207826816681233)
    with pytest.raises(ValueError, match="equal length"):
        spearman(x, x[:5])


def test_spearman_ties_on_both_sides() -> None:
    # reference values computed once with scipy.stats.spearmanr
    a = torch.tensor([0.1, 0.4, 0.4, 0.2, 0.9, 0.3])
    b = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0, 0.0])
    assert spearman(a, b) == pytest.approx(0.75, abs=1e-12)


def test_compare_embeddings() -> None:
    gen = torch.Generator().manual_seed(0)
    ref = torch.nn.functional.normalize(torch.randn(40, 16, generator=gen), dim=-1)
    same = compare_embeddings(ref, ref * 3)  # scale does not matter: rows are re-normalised
    assert same.mean_cosine == pytest.approx(1.0) and same.min_cosine == pytest.approx(1.0)
    assert same.spearman == pytest.approx(1.0) and same.n_sentences == 40
    noisy = compare_embeddings(ref, ref + 0.1 * torch.randn(40, 16, generator=gen))
    assert 0.5 < noisy.min_cosine <= noisy.mean_cosine < 0.99 and 0.3 < noisy.spearman < 0.99
    assert set(noisy.to_dict()) == {"mean_cosine", "min_cosine", "spearman", "n_sentences"}
    with pytest.raises(ValueError, match="same shape"):
        compare_embeddings(ref, ref[:10])
