"""Error-feedback rounding (transforms/gptq.py) through EntropyCodedQuant(hessian=...)."""

from __future__ import annotations

import pytest
import torch

from llmcomp_hf.transforms import EntropyCodedQuant, NMPrune, Pipeline, UniformQuant, reconstruct
from llmcomp_hf.transforms.gptq import error_feedback_codes


def _data(seed: int = 0, out: int = 48, n_in: int = 160, tokens: int = 600):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, n_in, generator=g)
    mix = torch.randn(n_in, n_in, generator=g) / n_in**0.5 + torch.eye(n_in)  # correlated inputs
    x = torch.randn(tokens, n_in, generator=g) @ mix * (1 + 4 * torch.rand(n_in, generator=g))
    return w, x, (x.T.double() @ x.double() / tokens)


def _out_err(w, w_hat, h) -> float:
    d = (w - w_hat).double()
    return float(torch.einsum("oi,ij,oj->", d, h, d))


def test_diagonal_hessian_gives_plain_rounding():
    w, _, _ = _data()
    h = torch.diag(torch.rand(w.shape[1]) + 0.5).double()
    plain = EntropyCodedQuant(step=0.1).apply(w)
    fed = EntropyCodedQuant(step=0.1).apply(w, hessian=h)
    assert torch.equal(plain.tensors["codes"], fed.tensors["codes"])
    assert fed.meta["error_feedback"] is True and "error_feedback" not in plain.meta


@pytest.mark.parametrize("importance", [False, True])
@pytest.mark.parametrize("step", [0.05, 0.4])
def test_error_feedback_lowers_the_output_error_on_the_same_grid(step, importance):
    w, x, h = _data()
    imp = x.square().mean(0) if importance else None
    cfg = EntropyCodedQuant(step=step)
    plain = cfg.apply(w, importance=imp)
    fed = cfg.apply(w, importance=imp, hessian=h)
    assert torch.equal(plain.tensors["scales"], fed.tensors["scales"])  # same grid
    w_plain, w_fed = plain.reconstruct(), reconstruct(fed.tensors, fed.meta)
    assert _out_err(w, w_fed, h) < 0.8 * _out_err(w, w_plain, h)


def test_blocked_update_equals_column_by_column():
    w, _, h = _data(1, out=8, n_in=70)
    steps = torch.full_like(w, 0.2)
    a = error_feedback_codes(w, steps, h, block=16)
    b = error_feedback_codes(w, steps, h, block=70)
    assert (a != b).float().mean() < 0.01  # equal up to float rounding ties


def test_hessian_is_refused_where_it_does_not_apply():
    w, _, h = _data()
    with pytest.raises(ValueError, match="UniformQuant does not use a hessian"):
        UniformQuant(bits=8).apply(w, hessian=h)
    with pytest.raises(ValueError, match=r"hessian must be \[in, in\] = \[160, 160\]"):
        EntropyCodedQuant().apply(w, hessian=h[:10, :10])
    with pytest.raises(ValueError, match="EntropyCodedQuant stage alone"):
        Pipeline(stages=(NMPrune(2, 4), EntropyCodedQuant())).apply(w, hessian=h)
