"""Config contract: validation errors name the field and the fix; every config round-trips JSON."""

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
    Transform,
    UniformQuant,
    config_from_dict,
    known_transforms,
    reconstruct,
)

CONFIGS = [
    UniformQuant(),
    UniformQuant(bits=3, group_size="channel", symmetric=False, scale_dtype="bfloat16"),
    UniformQuant(bits=2, group_size="tensor", scale_dtype="float32"),
    EntropyCodedQuant(),
    EntropyCodedQuant(step=None, target_rel_mse=1e-4, relative_to="absmax", group_size=256, column_range=4.0),
    NF4Quant(),
    NF4Quant(group_size="channel", scale_dtype="float32"),
    KMeansQuant(),
    KMeansQuant(levels=7, iters=3, group_size=128, codebook_dtype="float32", zero_level=True,
                max_fit_samples=None, tol=0.0, seed=5),
    LowRank(rank=8),
    LowRank(energy=0.5, factor_dtype="bfloat16"),
    LowRank(rank=4, method="randomized", oversample=2, power_iters=0, seed=3, residual=NF4Quant()),
    LowRank(rank=4, method="random_projection", residual=EntropyCodedQuant(step=0.5)),
    MagnitudePrune(),
    MagnitudePrune(sparsity=0.0),
    NMPrune(),
    NMPrune(n=1, m=8),
    Pipeline(stages=(NMPrune(), UniformQuant(bits=4))),
    Pipeline(stages=[MagnitudePrune(0.3), KMeansQuant(zero_level=True)]),
    Pipeline(stages=(LowRank(rank=16), UniformQuant(bits=8))),
    Pipeline(stages=(LowRank(rank=16, residual=UniformQuant(bits=4)),)),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.to_json()[:60])
def test_json_round_trip(cfg: Transform) -> None:
    text = json.dumps(cfg.to_dict())
    back = Transform.from_json(text)
    assert back == cfg and type(back) is type(cfg)
    assert type(cfg).from_dict(json.loads(text)) == cfg
    assert back.to_dict() == cfg.to_dict()


def test_every_registered_transform_has_a_round_trip_case() -> None:
    assert {c.name for c in CONFIGS} == set(known_transforms())


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: UniformQuant(bits=1), "bits"),
        (lambda: UniformQuant(bits=9), "bits"),
        (lambda: UniformQuant(bits=4.0), "bits"),
        (lambda: UniformQuant(group_size=1), "group_size"),
        (lambda: UniformQuant(group_size="row"), "group_size"),
        (lambda: UniformQuant(symmetric="yes"), "symmetric"),
        (lambda: UniformQuant(scale_dtype="float8"), "scale_dtype"),
        (lambda: EntropyCodedQuant(step=None), "step"),
        (lambda: EntropyCodedQuant(step=0.1, target_rel_mse=1e-3), "target_rel_mse"),
        (lambda: EntropyCodedQuant(step=0.0), "step"),
        (lambda: EntropyCodedQuant(step=float("nan")), "step"),
        (lambda: EntropyCodedQuant(relative_to="max"), "relative_to"),
        (lambda: EntropyCodedQuant(column_range=0.5), "column_range"),
        (lambda: NF4Quant(group_size=0), "group_size"),
        (lambda: KMeansQuant(levels=1), "levels"),
        (lambda: KMeansQuant(levels=257), "levels"),
        (lambda: KMeansQuant(codebook_dtype="bfloat16"), "codebook_dtype"),
        (lambda: KMeansQuant(max_fit_samples=10), "max_fit_samples"),
        (lambda: LowRank(), "rank"),
        (lambda: LowRank(rank=4, energy=0.9), "energy"),
        (lambda: LowRank(rank=0), "rank"),
        (lambda: LowRank(energy=1.5), "energy"),
        (lambda: LowRank(energy=0.9, method="randomized"), "method"),
        (lambda: LowRank(rank=4, method="qr"), "method"),
        (lambda: LowRank(rank=4, residual=MagnitudePrune()), "residual"),
        (lambda: MagnitudePrune(sparsity=1.0), "sparsity"),
        (lambda: MagnitudePrune(sparsity=-0.1), "sparsity"),
        (lambda: NMPrune(n=4, m=4), "n"),
        (lambda: NMPrune(n=2, m=1), "m"),
        (lambda: Pipeline(stages=()), "stages"),
        (lambda: Pipeline(stages=(UniformQuant(), MagnitudePrune())), "order"),
        (lambda: Pipeline(stages=(UniformQuant(), NF4Quant())), "order"),
        (lambda: Pipeline(stages=(MagnitudePrune(), LowRank(rank=4))), "pruning"),
        (lambda: Pipeline(stages=(LowRank(rank=4, residual=NF4Quant()), NF4Quant())), "residual"),
        (lambda: Pipeline(stages=(MagnitudePrune(), KMeansQuant())), "zero_level=True"),
        (lambda: Pipeline(stages=(Pipeline(stages=(NF4Quant(),)),)), "nested"),
    ],
)
def test_invalid_configs_name_the_field(make, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make()


def test_from_dict_errors() -> None:
    with pytest.raises(ValueError, match="unknown transform 'gptq'.*known"):
        config_from_dict({"transform": "gptq"})
    with pytest.raises(ValueError, match="version 99"):
        config_from_dict({"transform": "uniform", "version": 99})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['bitz'\]"):
        config_from_dict({"transform": "uniform", "bitz": 4})
    with pytest.raises(ValueError, match="expected 'uniform'"):
        UniformQuant.from_dict(NF4Quant().to_dict())
    with pytest.raises(ValueError, match="'transform' key"):
        config_from_dict({"bits": 4})
    with pytest.raises(ValueError, match="bits"):  # validation also runs on load
        config_from_dict({"transform": "uniform", "bits": 12})


def test_apply_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="floating point"):
        UniformQuant().apply(torch.ones(4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        UniformQuant().apply(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="empty"):
        NF4Quant().apply(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="torch.Tensor"):
        NF4Quant().apply([[1.0]])  # type: ignore[arg-type]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.to_json()[:60])
def test_contract_on_every_config(cfg: Transform, weight: torch.Tensor) -> None:
    out = cfg.apply(weight)
    # meta is JSON-serialisable and enough (with the tensors) to reconstruct
    meta = json.loads(json.dumps(out.meta))
    rebuilt = reconstruct(out.tensors, meta)
    assert rebuilt.shape == weight.shape and rebuilt.dtype == weight.dtype
    assert torch.equal(rebuilt, cfg.reconstruct(out.tensors, out.meta))
    assert all(isinstance(t, torch.Tensor) for t in out.tensors.values())
    # honest: lossy transforms report a non-zero error, and the error is what reconstruct gives
    err = (weight.double() - rebuilt.double()).square().sum() / weight.double().square().sum()
    assert out.error is not None and out.error.rel_mse == pytest.approx(float(err), rel=1e-9, abs=1e-15)
    assert out.lossless == (float(err) == 0.0)
    assert out.lossless == (cfg == MagnitudePrune(sparsity=0.0))
    assert out.stored_bits == sum(t.numel() * t.element_size() * 8 for t in out.tensors.values())
    assert 0 < out.packed_bits_per_weight <= out.bits_per_weight


def test_lossless_only_when_exact() -> None:
    on_grid = torch.arange(-7, 8, dtype=torch.float32).repeat(4, 4) / 8  # 4-bit symmetric grid, absmax 7/8
    out = UniformQuant(bits=4, group_size="tensor").apply(on_grid)
    assert out.lossless and out.error.rel_mse == 0
    assert not UniformQuant(bits=4).apply(on_grid + 0.01).lossless
    assert MagnitudePrune(sparsity=0.0).apply(on_grid).lossless


def test_bf16_and_fp16_inputs_keep_their_dtype(weight: torch.Tensor) -> None:
    for dtype in (torch.bfloat16, torch.float16):
        w = weight.to(dtype)
        for cfg in (UniformQuant(bits=8), NF4Quant(), LowRank(rank=8), NMPrune(),
                    Pipeline(stages=(MagnitudePrune(0.5), EntropyCodedQuant()))):
            out = cfg.apply(w)
            assert out.reconstruct().dtype == dtype
        assert NMPrune().apply(w).tensors["weight"].dtype == dtype  # pruning stores the input dtype
