"""Importance-aware stages (per-input-channel weights from calibration) and rate allocation."""

from __future__ import annotations

import math

import pytest
import torch

from llmcomp_hf.transforms import (
    EntropyCodedQuant,
    LowRank,
    MagnitudePrune,
    NF4Quant,
    NMPrune,
    Pipeline,
    UniformQuant,
    reconstruct,
)
from llmcomp_hf.transforms.allocate import allocate_steps
from llmcomp_hf.transforms.ecq import column_steps


@pytest.fixture
def importance() -> torch.Tensor:
    """Per-input-channel importance for the [96, 256] weight: log-uniform over 4 decades."""
    gen = torch.Generator().manual_seed(99)
    return 10 ** (4 * torch.rand(256, generator=gen) - 2)


def _weighted_mse(w: torch.Tensor, w_hat: torch.Tensor, imp: torch.Tensor) -> float:
    return float(((w - w_hat).double().square() * imp.double()).sum())


def test_column_steps_balance_and_clip(importance: torch.Tensor) -> None:
    c = column_steps(importance, limit=1e6)
    assert float(c.double().log().mean()) == pytest.approx(0.0, abs=1e-6)  # geometric mean 1
    assert torch.allclose(c * importance.sqrt(), (c * importance.sqrt())[0].expand(256), rtol=1e-4)
    clipped = column_steps(importance, limit=4.0)
    assert float(clipped.max()) <= 4.0 and float(clipped.min()) >= 0.25
    assert bool((column_steps(torch.tensor([0.0, 1.0, 1.0])) <= 16).all())


def _entropy(codes: torch.Tensor) -> float:
    _, counts = torch.unique(codes, return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * p.log2()).sum())


def test_ecq_importance_lowers_weighted_error(weight: torch.Tensor, importance: torch.Tensor) -> None:
    plain = EntropyCodedQuant(step=0.3).apply(weight)
    aware = EntropyCodedQuant(step=0.3, column_range=1e3).apply(weight, importance=importance)
    assert aware.tensors["col_steps"].shape == (256,)
    # per element the error is at most half the element's own step
    s = float(aware.tensors["scales"][0]) * aware.tensors["col_steps"].float()
    assert bool(((weight - aware.reconstruct()).abs() <= s / 2 * (1 + 1e-6) + 1e-12).all())
    assert _weighted_mse(weight, aware.reconstruct(), importance) < 0.5 * _weighted_mse(
        weight, plain.reconstruct(), importance)
    assert torch.equal(reconstruct(aware.tensors, aware.meta), aware.reconstruct())


def test_ecq_importance_keeps_high_rate_entropy(weight: torch.Tensor) -> None:
    """At a fine step the geometric-mean normalisation keeps the code entropy (high-rate theory).

    Pooling columns of different step sizes in one order-0 table costs a little (the mixture's
    entropy exceeds the mean per-column entropy), hence the slack.
    """
    imp = 10 ** torch.linspace(-0.5, 0.5, 256)
    plain = EntropyCodedQuant(step=0.05).apply(weight)
    aware = EntropyCodedQuant(step=0.05).apply(weight, importance=imp)
    assert abs(_entropy(aware.tensors["codes"]) - _entropy(plain.tensors["codes"])) < 0.15
    assert _weighted_mse(weight, aware.reconstruct(), imp) < _weighted_mse(weight, plain.reconstruct(), imp)


def test_ecq_importance_with_target_mse(weight: torch.Tensor, importance: torch.Tensor) -> None:
    out = EntropyCodedQuant(step=None, target_rel_mse=1e-3).apply(weight, importance=importance)
    assert out.error.rel_mse == pytest.approx(1e-3, rel=0.05)


def test_wanda_pruning_keeps_important_columns(weight: torch.Tensor) -> None:
    imp = torch.ones(256)
    imp[::4] = 1e14  # one column in every run of 4
    for prune in (MagnitudePrune(0.5), NMPrune(2, 4)):
        pruned = prune.apply(weight, importance=imp).tensors["weight"]
        assert bool((pruned[:, ::4] != 0).all())  # |w| * 1e7 beats everything else
        plain = prune.apply(weight).tensors["weight"]
        assert int((plain == 0).sum()) == int((pruned == 0).sum())


def test_pipeline_routes_importance(weight: torch.Tensor, importance: torch.Tensor) -> None:
    out = Pipeline(stages=(NMPrune(2, 4), EntropyCodedQuant(step=0.2))).apply(weight, importance=importance)
    assert "weight.col_steps" in out.tensors
    # quantizers without importance still compose with an importance-aware pruning stage
    out = Pipeline(stages=(NMPrune(2, 4), NF4Quant())).apply(weight, importance=importance)
    assert "weight.col_steps" not in out.tensors
    with pytest.raises(ValueError, match="low-rank"):
        Pipeline(stages=(LowRank(rank=4), EntropyCodedQuant())).apply(weight, importance=importance)
    with pytest.raises(ValueError, match="drop it"):
        Pipeline(stages=(NF4Quant(),)).apply(weight, importance=importance)


def test_importance_validation(weight: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="does not use importance"):
        UniformQuant().apply(weight, importance=torch.ones(256))
    with pytest.raises(ValueError, match="one entry per input channel"):
        EntropyCodedQuant().apply(weight, importance=torch.ones(96))
    with pytest.raises(ValueError, match="non-negative"):
        EntropyCodedQuant().apply(weight, importance=-torch.ones(256))
    with pytest.raises(ValueError, match="one entry per input channel"):
        EntropyCodedQuant().apply(torch.ones(8), importance=torch.ones(8))


# -- allocation ------------------------------------------------------------------------------------

def test_allocate_equal_sensitivities_gives_the_base_step() -> None:
    steps = allocate_steps({"a": 1.0, "b": 1.0}, {"a": 100, "b": 100}, 0.3)
    assert steps == pytest.approx({"a": 0.3, "b": 0.3})


def test_allocate_follows_sqrt_rule_and_keeps_rate() -> None:
    sens = {"a": 4.0, "b": 1.0, "c": 0.25}
    numel = {"a": 1000, "b": 1000, "c": 4000}
    steps = allocate_steps(sens, numel, 0.2, floor=0.0)
    assert steps["b"] / steps["a"] == pytest.approx(2.0)
    assert steps["c"] / steps["b"] == pytest.approx(2.0 * math.sqrt(4.0))  # sqrt(n/s): 2 for n, 2 for s
    log_gm = sum(numel[k] * math.log(steps[k]) for k in steps) / sum(numel.values())
    assert math.exp(log_gm) == pytest.approx(0.2)
    # lower loss at equal (high-rate) entropy: sum s * c^2 below the uniform allocation
    assert sum(sens[k] * steps[k] ** 2 for k in sens) < sum(sens[k] * 0.2**2 for k in sens)


def test_allocate_floor_and_clip() -> None:
    steps = allocate_steps({"a": 1.0, "b": 1.0, "dead": 0.0}, {"a": 10, "b": 10, "dead": 10}, 0.1, hi=0.5)
    assert steps["dead"] <= 0.5 and math.isfinite(steps["dead"])
    with pytest.raises(ValueError, match="same"):
        allocate_steps({"a": 1.0}, {"b": 1}, 0.1)
    with pytest.raises(ValueError, match="median"):
        allocate_steps({"a": 0.0, "b": 0.0}, {"a": 1, "b": 1}, 0.1)
    with pytest.raises(ValueError, match="positive"):
        allocate_steps({"a": 1.0}, {"a": 1}, -0.1)


def test_ecq_row_importance_scales_rows(weight: torch.Tensor, importance: torch.Tensor) -> None:
    """Per-output-channel steps: (row importance)^-1/2, geometric mean 1, within row_range; the
    row-weighted error drops; the stored tensors rebuild the same weight."""
    gen = torch.Generator().manual_seed(7)
    rows = 10 ** (2 * torch.rand(weight.shape[0], generator=gen) - 1)  # two decades
    plain = EntropyCodedQuant(step=0.2).apply(weight, importance=importance)
    aware = EntropyCodedQuant(step=0.2, row_range=1e3).apply(weight, importance=importance, row_importance=rows)
    r = aware.tensors["row_steps"].float()
    assert r.shape == (weight.shape[0],)
    assert float(r.double().log().mean()) == pytest.approx(0.0, abs=2e-3)  # fp16-stored
    assert torch.allclose(r * rows.sqrt(), (r * rows.sqrt())[0].expand_as(r), rtol=2e-3)
    step = float(aware.tensors["scales"][0]) * r[:, None] * aware.tensors["col_steps"].float()[None, :]
    assert bool(((weight - aware.reconstruct()).abs() <= step / 2 * (1 + 1e-6) + 1e-12).all())
    both = rows[:, None] * importance[None, :]
    assert _weighted_mse(weight, aware.reconstruct(), both) < 0.7 * _weighted_mse(weight, plain.reconstruct(), both)
    assert torch.equal(reconstruct(aware.tensors, aware.meta), aware.reconstruct())
    clipped = EntropyCodedQuant(step=0.2).apply(weight, row_importance=rows)
    assert float(clipped.tensors["row_steps"].max()) <= 2.0 and float(clipped.tensors["row_steps"].min()) >= 0.5
    assert "col_steps" not in clipped.tensors
    assert torch.equal(reconstruct(clipped.tensors, clipped.meta), clipped.reconstruct())


def test_row_importance_validation(weight: torch.Tensor) -> None:
    rows = torch.ones(weight.shape[0])
    with pytest.raises(ValueError, match="one entry per output channel"):
        EntropyCodedQuant().apply(weight, row_importance=rows[:-1])
    with pytest.raises(ValueError, match="non-negative and not all zero"):
        EntropyCodedQuant().apply(weight, row_importance=torch.zeros(weight.shape[0]))
    with pytest.raises(ValueError, match="UniformQuant does not use row_importance"):
        UniformQuant(bits=8).apply(weight, row_importance=rows)
    with pytest.raises(ValueError, match="row_importance is used by an EntropyCodedQuant stage"):
        Pipeline(stages=(LowRank(rank=8), EntropyCodedQuant())).apply(weight, row_importance=rows)
    with pytest.raises(ValueError, match="row_range"):
        EntropyCodedQuant(row_range=0.5)
    routed = Pipeline(stages=(NMPrune(2, 4), EntropyCodedQuant())).apply(weight, row_importance=rows * 3)
    assert "weight.row_steps" in routed.tensors


def test_column_steps_keep_geometric_mean_when_clipped() -> None:
    """Heavy clipping on one side must not move the average step (the rate allocation relies on it)."""
    imp = torch.cat([torch.full((10,), 1e6), torch.ones(90)])  # 10 channels far more important
    c = column_steps(imp, limit=2.0)
    assert float(c.double().log().mean()) == pytest.approx(0.0, abs=1e-6)  # float32 output
    assert float(c.max()) <= 2.0 + 1e-6 and float(c.min()) >= 0.5 - 1e-6
    assert float(c[:10].max()) < float(c[10:].min())  # the important channels keep the finer steps
