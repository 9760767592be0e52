"""``torch.compile`` of models whose weights stay compressed in memory (``decode="on_the_fly"``).

Compiled graphs decode through the custom ops ``llmcomp::decode`` / ``llmcomp::decode_rows``: no graph
break (``fullgraph=True``), outputs bit-identical to the uncompiled model with the eager and aot_eager
backends, and to the compiled plain model with inductor.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import llmcomp_hf
from llmcomp_hf.codec import encode
from llmcomp_hf.module_swap import keep_compressed
from llmcomp_hf.modules import CompressedEmbedding, CompressedLinear

from .helpers import raw_bits, tiny_model

IDS = [torch.tensor([[1, 5, 9, 200, 17]]), torch.tensor([[3, 3, 8, 1, 0, 7], [4, 4, 2, 999, 12, 6]])]


@pytest.fixture(scope="module")
def fly(tmp_path_factory) -> torch.nn.Module:
    """A tiny bf16 Llama loaded on the fly from its compressed checkpoint."""
    from transformers import AutoModelForCausalLM

    root: Path = tmp_path_factory.mktemp("compile")
    tiny_model("llama", torch.bfloat16, tie=False).save_pretrained(root / "dense")
    model = AutoModelForCausalLM.from_pretrained(root / "dense", quantization_config=llmcomp_hf.LosslessConfig(min_numel=0))
    model.save_pretrained(root / "packed")
    with llmcomp_hf.load_options(decode="on_the_fly"):
        model = AutoModelForCausalLM.from_pretrained(root / "packed")
    assert isinstance(model.model.layers[0].mlp.down_proj, CompressedLinear)
    assert isinstance(model.model.embed_tokens, CompressedEmbedding)
    return model


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_model_is_one_graph_and_bit_identical(fly, backend: str) -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    assert fly.hf_quantizer.is_compileable
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(fly, backend=counter, fullgraph=True)  # a graph break would raise
    with torch.no_grad():
        for ids in IDS:  # a second shape: guards and recompiles hold
            assert torch.equal(raw_bits(compiled(ids).logits), raw_bits(fly(ids).logits))
        want = fly.generate(IDS[0], max_new_tokens=4, do_sample=False)
        fly.forward = torch.compile(fly.forward, backend=counter, fullgraph=True)  # what generate calls
        try:
            got = fly.generate(IDS[0], max_new_tokens=4, do_sample=False)
        finally:
            del fly.forward
    assert torch.equal(got, want)
    assert counter.frame_count >= 2


def test_compiled_model_gives_the_same_gradients(fly) -> None:
    """With a gradient to the input, the compiled graph keeps its own decoded weights: same gradients."""
    torch._dynamo.reset()
    compiled = torch.compile(fly.model, backend="aot_eager", fullgraph=True)
    embeds = fly.model.embed_tokens(IDS[1])
    grads = []
    for model in (fly.model, compiled):
        x = embeds.clone().requires_grad_(True)
        model(inputs_embeds=x).last_hidden_state.float().sum().backward()
        grads.append(x.grad)
    assert torch.equal(raw_bits(grads[0]), raw_bits(grads[1]))


def test_inductor_matches_the_compiled_plain_layers() -> None:
    """Inductor (C++ on the CPU) compiles the decode ops; its outputs are those of the same layers compiled plain.

    ``emulate_precision_casts`` makes inductor round intermediates as eager mode does; without it, inductor's
    fusion choices (which differ between any two graphs) decide how long intermediates stay in float32.
    """
    from torch._inductor import config as inductor_config

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Embedding(50, 32), nn.Linear(32, 48), nn.SiLU(), nn.Linear(48, 32, bias=False))
    plain = plain.to(torch.bfloat16).eval()
    fly = copy.deepcopy(plain)
    keep_compressed(fly, {f"{i}.weight": encode(m.weight.detach(), name=f"{i}.weight")
                          for i, m in enumerate(plain) if hasattr(m, "weight")})
    assert isinstance(fly[0], CompressedEmbedding) and isinstance(fly[3], CompressedLinear)
    ids = torch.tensor([[3, 7, 49, 0], [1, 1, 2, 30]])
    torch._dynamo.reset()
    with torch.no_grad(), inductor_config.patch(emulate_precision_casts=True):
        want = torch.compile(plain, backend="inductor")(ids)
        got = torch.compile(fly, backend="inductor", fullgraph=True)(ids)
        assert torch.equal(raw_bits(got), raw_bits(want))
        assert torch.equal(raw_bits(got), raw_bits(fly(ids)))


def test_compiled_layers_replay_dtype_conversions() -> None:
    """A compressed model converted with ``.to(dtype)`` casts each decoded weight in the compiled graph too."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Embedding(50, 32), nn.Linear(32, 48), nn.SiLU(), nn.Linear(48, 32, bias=False))
    plain = plain.to(torch.bfloat16).eval()
    fly = copy.deepcopy(plain)
    keep_compressed(fly, {f"{i}.weight": encode(m.weight.detach(), name=f"{i}.weight")
                          for i, m in enumerate(plain) if hasattr(m, "weight")})
    plain.to(torch.float16).to(torch.float32)
    fly.to(torch.float16).to(torch.float32)
    ids = torch.tensor([[3, 7, 49, 0], [1, 1, 2, 30]])
    torch._dynamo.reset()
    with torch.no_grad():
        want = plain(ids)
        assert want.dtype == torch.float32 and torch.equal(raw_bits(fly(ids)), raw_bits(want))
        got = torch.compile(fly, backend="aot_eager", fullgraph=True)(ids)
        assert torch.equal(raw_bits(got), raw_bits(want))
