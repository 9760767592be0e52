"""Uniform and entropy-constrained quantization: values on the grid, error within half a step."""

from __future__ import annotations

import pytest
import torch

from llmcomp_hf.transforms import EntropyCodedQuant, UniformQuant
from llmcomp_hf.transforms.quantize import group_len, to_groups

EPS = 1e-6  # float32 arithmetic slack, relative to the step


def _steps(out, shape, group_size) -> torch.Tensor:
    """Per-element step (the group's stored scale), shaped like the weight."""
    g = group_len(shape, group_size)
    s = out.tensors["scales"].float()[:, None].expand(-1, g)
    return s.reshape(-1)[: torch.Size(shape).numel()].reshape(shape)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("group_size", [32, 100, "channel", "tensor"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_uniform_on_grid_and_half_step_error(weight: torch.Tensor, bits: int, group_size, symmetric: bool) -> None:
    cfg = UniformQuant(bits=bits, group_size=group_size, symmetric=symmetric)
    out = cfg.apply(weight)
    codes = out.tensors["codes"]
    assert codes.dtype == torch.uint8 and codes.shape == weight.shape
    assert int(codes.max()) <= (1 << bits) - 1
    if symmetric:
        assert int(codes.min()) >= 1  # restricted range: q in [-(2^(b-1)-1), 2^(b-1)-1], offset 2^(b-1)
    step = _steps(out, weight.shape, group_size)
    w_hat = out.reconstruct()
    err = (weight - w_hat).abs()
    assert bool((err <= step / 2 * (1 + EPS) + 1e-12).all())
    # on the grid: w_hat / step is an integer (offset by the zero point for asymmetric)
    ratio = w_hat.double() / step.double()
    assert torch.allclose(ratio, ratio.round(), atol=1e-4)


def test_symmetric_codes_are_centred(weight: torch.Tensor) -> None:
    out = UniformQuant(bits=4, group_size=64).apply(weight)
    codes = out.tensors["codes"].long()
    assert int(torch.bincount(codes.reshape(-1)).argmax()) in (7, 8, 9)  # peak at the zero code 8
    zero = UniformQuant(bits=4).apply(torch.zeros(8, 64))
    assert bool((zero.tensors["codes"] == 8).all()) and bool((zero.reconstruct() == 0).all())


def test_asymmetric_keeps_zero_exact_and_uses_range() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(16, 64, generator=gen) + 0.5  # all positive: the range is extended down to 0
    w[:, ::7] = 0.0
    out = UniformQuant(bits=3, group_size=64, symmetric=False).apply(w)
    assert bool((out.reconstruct()[:, ::7] == 0).all())
    assert out.tensors["zero_points"].dtype == torch.uint8


def test_scales_rounded_up_so_nothing_clips() -> None:
    # absmax / qmax not representable in fp16: a rounded-down scale would clip the extremes
    w = torch.tensor([[1.0001, -0.3, 0.7, 1.0001 / 3] * 8])
    for scale_dtype in ("float16", "bfloat16"):
        out = UniformQuant(bits=8, group_size=32, scale_dtype=scale_dtype).apply(w)
        s = float(out.tensors["scales"][0])
        assert s * 127 >= 1.0001
        assert float((w - out.reconstruct()).abs().max()) <= s / 2 * (1 + EPS)


def test_partial_last_group_and_zero_groups() -> None:
    w = torch.zeros(5, 7)
    w[4] = torch.linspace(-1, 1, 7)
    out = UniformQuant(bits=8, group_size=16).apply(w)  # 35 elements -> 3 groups, last one padded
    assert out.tensors["scales"].shape == (3,)
    assert float(out.tensors["scales"][0]) == 0.0
    assert torch.allclose(out.reconstruct(), w, atol=1 / 127)


def test_scale_overflow_is_explained() -> None:
    with pytest.raises(ValueError, match="scale_dtype='float32'"):
        UniformQuant(bits=2, scale_dtype="float16").apply(torch.tensor([[1e9, -1e9]]))
    out = UniformQuant(bits=2, scale_dtype="float32").apply(torch.tensor([[1e9, -1e9]]))
    assert torch.equal(out.reconstruct(), torch.tensor([[1e9, -1e9]]))


def test_group_layout_matches_rows() -> None:
    w = torch.arange(24, dtype=torch.float32).reshape(3, 8)
    assert torch.equal(to_groups(w, 4)[1], w[0, 4:])
    assert group_len((3, 8), "channel") == 8 and group_len((3, 8), "tensor") == 24 and group_len((7,), "channel") == 7


# -- entropy-constrained ---------------------------------------------------------------------------

@pytest.mark.parametrize("relative_to", ["rms", "absmax"])
@pytest.mark.parametrize("group_size", ["tensor", "channel", 64])
@pytest.mark.parametrize("step", [0.002, 0.05, 0.5, 2.0])
def test_ecq_half_step_error_and_code_width(weight: torch.Tensor, relative_to: str, group_size, step: float) -> None:
    cfg = EntropyCodedQuant(step=step, relative_to=relative_to, group_size=group_size)
    out = cfg.apply(weight)
    s = _steps(out, weight.shape, group_size)
    w_hat = out.reconstruct()
    assert bool(((weight - w_hat).abs() <= s / 2 * (1 + EPS) + 1e-12).all())
    q = (w_hat.double() / s.double()).round()
    assert torch.allclose(w_hat.double(), q * s.double(), atol=1e-7)
    qmax = int(q.abs().max())
    codes = out.tensors["codes"]
    if qmax <= 127:
        assert codes.dtype == torch.int8 and torch.equal(codes.long(), q.long())
    else:
        assert codes.dtype == (torch.int16 if qmax <= 16383 else torch.int32) and out.meta["zigzag"]
        assert int(codes.min()) >= 0  # zigzag: non-negative, small magnitudes first
        assert torch.equal(codes.long(), torch.where(q >= 0, 2 * q, -2 * q - 1).long())


def test_ecq_codes_peak_at_zero(weight: torch.Tensor) -> None:
    codes = EntropyCodedQuant(step=0.5).apply(weight).tensors["codes"]
    values, counts = torch.unique(codes, return_counts=True)
    assert int(values[counts.argmax()]) == 0


@pytest.mark.parametrize("target", [1e-2, 1e-3, 1e-5])
def test_ecq_hits_target_mse(weight: torch.Tensor, target: float) -> None:
    out = EntropyCodedQuant(step=None, target_rel_mse=target).apply(weight)
    assert out.error.rel_mse == pytest.approx(target, rel=0.05)
    assert out.meta["step"] > 0


def test_ecq_wide_grids_use_int32_then_refuse(weight: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    spiky = weight.clone()
    spiky[0, 0] = 1000 * float(weight.abs().max())
    out = EntropyCodedQuant(step=0.001).apply(spiky)
    assert out.tensors["codes"].dtype == torch.int32
    assert float((out.reconstruct() - spiky).abs().max()) <= float(out.tensors["scales"][0]) / 2 * (1 + 1e-6)
    monkeypatch.setattr("llmcomp_hf.transforms.ecq.MAX_ZIGZAG", 1 << 16)  # int32's limit is out of reach here
    with pytest.raises(ValueError, match="larger step"):
        EntropyCodedQuant(step=0.001).apply(spiky)
