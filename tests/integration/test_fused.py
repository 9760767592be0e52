"""llmcomp_hf.fused: a kept-encoded Linear decoded a run of rows at a time, bit-identical to F.linear on
the whole decoded weight (checked at run time, with a fallback), with a scratch of one run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import llmcomp_hf
from llmcomp_hf import fused, modules
from llmcomp_hf.codec import CorruptStreamError, FormatError, encode
from llmcomp_hf.modules import CompressedLinear

from .helpers import raw_bits, tiny_model


def _weight(n: int, k: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 0.05).to(dtype)


@pytest.mark.parametrize("n,k,bs,chunk", [(1000, 300, 256, 4096), (64, 64, 256, 1), (37, 1024, 512, 1 << 19),
                                          (513, 100, 1024, 1700), (17, 5000, 256, 256)])
def test_runs_cover_every_row_once(n: int, k: int, bs: int, chunk: int) -> None:
    plan = fused.RowPlan(encode(_weight(n, k, torch.bfloat16), block_size=bs), chunk)
    rows = [(r.r0, r.r1) for r in plan.runs]
    assert rows[0][0] == 0 and rows[-1][1] == n and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert all((r1 - r0) % fused.ROW_ALIGN == 0 for r0, r1 in rows[:-1])
    assert len(rows) == 1 or rows[-1][1] - rows[-1][0] >= fused.ROW_ALIGN
    for prev, run in zip([None] + plan.runs[:-1], plan.runs):
        assert run.lo * bs <= run.r0 * k and run.r1 * k <= min(run.hi * bs, n * k)
        assert run.off + (run.r1 - run.r0) * k <= (run.hi - run.lo) * bs <= plan.scratch_elements
        assert run.reuse == (prev is not None and run.lo == prev.hi - 1)


def _loaded(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """What decode="load" computes: its weights are Parameters that require grad (transformers' default)."""
    with torch.no_grad():
        return F.linear(x, torch.nn.Parameter(w.clone()), None if b is None else torch.nn.Parameter(b.clone()))


def _inputs(k: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    h = torch.randn(4, 6, k).to(dtype)
    return {"1": torch.randn(1, k).to(dtype), "1x1": torch.randn(1, 1, k).to(dtype), "3": torch.randn(3, k).to(dtype),
            "2x5": torch.randn(2, 5, k).to(dtype), "64": torch.randn(64, k).to(dtype),
            "last position (strided)": h[:, -1:, :], "strided 2-D": h[:, 2, :], "transposed": h.transpose(0, 1)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_is_bit_identical_to_a_loaded_layer(dtype: torch.dtype, bias: bool) -> None:
    w = _weight(1000, 300, dtype)
    b = (torch.randn(1000) * 0.1).to(dtype) if bias else None
    plan = fused.RowPlan(encode(w, block_size=256), 4096)  # 62 runs of 16 rows and one of 8 + 16
    for name, x in _inputs(300, dtype).items():
        want = _loaded(x, w, b)
        assert torch.equal(raw_bits(fused.like_loaded(x, w, b)), raw_bits(want)), name
        assert torch.equal(raw_bits(fused.linear(x, plan, b, lambda: w, lambda: w.clone())), raw_bits(want)), name


def test_half_float_runs_are_identical_on_this_cpu() -> None:
    """The speed of decode="on_the_fly" rests on this (see llmcomp_hf.fused): bf16 runs of rows give
    F.linear's bits without the fallback. If torch changes its kernels this fails: re-measure."""
    for dtype in (torch.bfloat16, torch.float16):
        w = _weight(2816, 1024, dtype)
        plan = fused.RowPlan(encode(w), fused.CHUNK_ELEMENTS)
        for m in (1, 2, 7, 32, 200):
            x = torch.randn(m, 1024).to(dtype)
            assert torch.equal(raw_bits(fused.linear_runs(x, plan, None)), raw_bits(F.linear(x, w))), (dtype, m)


def test_a_setting_whose_runs_differ_falls_back_for_good(monkeypatch) -> None:
    w = _weight(200, 64, torch.bfloat16, seed=3)
    plan = fused.RowPlan(encode(w, block_size=256), 1024)
    calls = []

    def off_by_one(x, plan, bias, stamp=None):
        calls.append(1)
        out = F.linear(x, w, bias)
        return (out.view(torch.int16) ^ 1).view(torch.bfloat16)

    monkeypatch.setattr(fused, "linear_runs", off_by_one)
    monkeypatch.setattr(fused, "_SAME", {})
    x = torch.randn(1, 64).to(torch.bfloat16)
    for _ in range(3):
        assert torch.equal(raw_bits(fused.linear(x, plan, None, lambda: w, lambda: w.clone())), raw_bits(F.linear(x, w)))
    assert len(calls) == 1 and fused.fallbacks() == [plan.key(x, None)]


def test_compressed_linear_uses_runs_with_a_small_scratch(monkeypatch) -> None:
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 4096)
    w = _weight(1000, 300, torch.bfloat16, seed=4)
    b = (torch.randn(1000) * 0.1).to(torch.bfloat16)
    layer = CompressedLinear(encode(w, block_size=1024, name="proj.weight"), b)
    x = torch.randn(2, 3, 300).to(torch.bfloat16)
    modules.SCRATCH.buffers.clear()
    fused.BUFFERS.by_dtype.clear()
    assert torch.equal(raw_bits(layer(x)), raw_bits(F.linear(x, w, b)))
    assert len(layer._row_plan.runs) > 10
    assert modules.SCRATCH.nbytes() == 0  # nothing decoded whole
    assert fused.scratch_nbytes() < w.numel() * 2 / 10


def test_damaged_weight_raises_naming_the_tensor() -> None:
    w = _weight(256, 256, torch.bfloat16, seed=5)
    enc = encode(w, block_size=1024, name="layer.weight")
    layer = CompressedLinear(enc)
    data = layer.weight.llmcomp_data
    data[enc.index[3] + 40] ^= 0x5A  # inside block 3's coded exponent plane
    with pytest.raises(CorruptStreamError, match="layer.weight"):
        layer(torch.randn(1, 256).to(torch.bfloat16))


def test_index_rewritten_in_place_after_a_forward_is_refused() -> None:
    """Buffers are validated once per in-place version: a tampered index is caught on the next forward."""
    w = _weight(256, 256, torch.bfloat16, seed=6)
    layer = CompressedLinear(encode(w, block_size=1024, name="layer.weight"))
    x = torch.randn(1, 256).to(torch.bfloat16)
    assert torch.equal(raw_bits(layer(x)), raw_bits(F.linear(x, w)))
    layer.weight.llmcomp_index[2] = 2**40
    with pytest.raises(FormatError, match="layer.weight"):
        layer(x)


def test_layer_made_under_inference_mode() -> None:
    """Inference tensors have no version counter: the encoding is then validated on every forward."""
    w = _weight(64, 512, torch.bfloat16, seed=7)
    with torch.inference_mode():
        layer = CompressedLinear(encode(w, block_size=1024))
        x = torch.randn(3, 512).to(torch.bfloat16)
        assert torch.equal(raw_bits(layer(x)), raw_bits(F.linear(x, w)))
        assert layer._row_plan.stamp is None


def test_torch_threads_survive_the_first_parallel_decode() -> None:
    """numba's OpenMP pool shares torch's runtime and used to set torch to all cores when it started."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(1)\n"
            "from llmcomp_hf.codec import encode, decode\n"
            "decode(encode(torch.randn(1 << 18), block_size=4096), threads=2)\n"
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "1"


def test_tiny_llama_generates_the_same_tokens_with_many_runs(tmp_path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 2048)
    tiny_model("llama", torch.bfloat16, tie=False).save_pretrained(tmp_path / "dense")
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    packed = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", quantization_config=llmcomp_hf.LosslessConfig(min_numel=0))
    packed.save_pretrained(tmp_path / "packed")
    with llmcomp_hf.load_options(decode="on_the_fly"):
        fly = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    ids = torch.tensor([[1, 5, 9, 200, 17], [3, 3, 8, 1, 0]])
    with torch.inference_mode():
        assert torch.equal(raw_bits(dense(ids).logits), raw_bits(fly(ids).logits))
        last = dense(ids, logits_to_keep=1).logits  # the head sees a strided input
        assert torch.equal(raw_bits(last), raw_bits(fly(ids, logits_to_keep=1).logits))
        want = dense.generate(ids, max_new_tokens=6, do_sample=False)
        assert torch.equal(want, fly.generate(ids, max_new_tokens=6, do_sample=False))
    assert len(fly.lm_head._row_plan.runs) > 1
    assert not [k for k in fused.fallbacks() if k[4] == torch.bfloat16]
