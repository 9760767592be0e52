"""Weights kept encoded in memory (``load_options(decode="on_the_fly")``): same outputs, less memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import llmcomp_hf
from llmcomp_hf.modules import CompressedConv1D, CompressedEmbedding, CompressedLinear, EncodedWeight

from .helpers import assert_same_state, raw_bits, shard_files, tiny_model

SENTENCES = ["The cat sat on the mat.", "Entropy coding keeps every bit of the weights.", "ok"]


@pytest.fixture(scope="module")
def minilm_bf16(tmp_path_factory, minilm_dir) -> tuple[Path, Path]:
    """(dense bf16 MiniLM folder, its llmcomp-compressed copy)."""
    from transformers import AutoModel

    root = tmp_path_factory.mktemp("otf")
    dense, packed = root / "dense", root / "packed"
    AutoModel.from_pretrained(minilm_dir, dtype=torch.bfloat16).save_pretrained(dense)
    model = AutoModel.from_pretrained(minilm_dir, dtype=torch.bfloat16, quantization_config=llmcomp_hf.LosslessConfig())
    model.save_pretrained(packed)
    return dense, packed


def _embed(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).last_hidden_state


def test_minilm_on_the_fly_is_bit_identical_and_smaller(minilm_bf16, minilm_dir) -> None:
    from transformers import AutoModel, AutoTokenizer

    dense_dir, packed_dir = minilm_bf16
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    dense = AutoModel.from_pretrained(dense_dir)
    with llmcomp_hf.load_options(decode="on_the_fly"):
        fly = AutoModel.from_pretrained(packed_dir)
    assert isinstance(fly.encoder.layer[0].intermediate.dense, CompressedLinear)
    assert isinstance(fly.embeddings.word_embeddings, CompressedEmbedding)
    assert fly.encoder.layer[0].intermediate.dense.weight.dtype == torch.bfloat16
    assert torch.equal(raw_bits(_embed(dense, tokenizer)), raw_bits(_embed(fly, tokenizer)))

    # Resident bytes: every buffer and parameter, by size (not timing). Target: <= 0.68 of dense bf16.
    ratio = fly.get_memory_footprint() / dense.get_memory_footprint()
    encoded = [m for m in fly.modules() if isinstance(m, EncodedWeight)]
    assert len(encoded) == 6 * 6 + 1 + 2  # 6 Linear per layer, pooler, word and position embeddings
    assert ratio <= 0.68, ratio
    assert not any(isinstance(p, torch.Tensor) and p.numel() == 30522 * 384 for p in fly.parameters())


def test_on_the_fly_save_writes_the_same_shards(minilm_bf16, tmp_path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModel

    _, packed_dir = minilm_bf16
    with llmcomp_hf.load_options(decode="on_the_fly"):
        fly = AutoModel.from_pretrained(packed_dir)
    fly.save_pretrained(tmp_path / "again")
    (a,), (b,) = shard_files(packed_dir), shard_files(tmp_path / "again")
    assert_same_state(load_file(a), load_file(b))
    reloaded = AutoModel.from_pretrained(tmp_path / "again")
    assert_same_state(reloaded.state_dict(), AutoModel.from_pretrained(packed_dir).state_dict())


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_tiny_causal_lm_generate_identical(kind: str, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    tiny_model(kind, torch.bfloat16, tie=False).save_pretrained(tmp_path / "dense")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dense")  # same load path as the compressed one
    packed = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", quantization_config=llmcomp_hf.LosslessConfig(min_numel=0))
    packed.save_pretrained(tmp_path / "packed")
    with llmcomp_hf.load_options(decode="on_the_fly"):
        fly = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    if kind == "llama":
        assert isinstance(fly.model.layers[0].mlp.down_proj, CompressedLinear)
    else:
        assert isinstance(fly.transformer.h[0].attn.c_attn, CompressedConv1D)
    ids = torch.tensor([[1, 5, 9, 200, 17], [3, 3, 8, 1, 0]])
    with torch.no_grad():
        want = model(ids).logits
        got = fly(ids).logits
        assert torch.equal(raw_bits(want), raw_bits(got))
        gen_want = model.generate(ids, max_new_tokens=6, do_sample=False)
        gen_got = fly.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(gen_want, gen_got)


def test_compress_on_load_then_keep_compressed(minilm_dir) -> None:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    dense = AutoModel.from_pretrained(minilm_dir, dtype=torch.bfloat16)
    with llmcomp_hf.load_options(decode="on_the_fly"):
        fly = AutoModel.from_pretrained(minilm_dir, dtype=torch.bfloat16, quantization_config=llmcomp_hf.LosslessConfig())
    assert isinstance(fly.encoder.layer[5].output.dense, CompressedLinear)
    assert torch.equal(raw_bits(_embed(dense, tokenizer)), raw_bits(_embed(fly, tokenizer)))


def test_load_options_validation() -> None:
    with pytest.raises(ValueError, match="decode must be one of"):
        with llmcomp_hf.load_options(decode="lazy"):
            pass


@pytest.mark.parametrize("device_map", ["cpu", "auto"])
def test_on_the_fly_with_device_map(minilm_bf16, device_map: str) -> None:
    from transformers import AutoModel

    dense_dir, packed_dir = minilm_bf16
    with llmcomp_hf.load_options(decode="on_the_fly"):
        fly = AutoModel.from_pretrained(packed_dir, device_map=device_map)
    dense = AutoModel.from_pretrained(dense_dir, device_map=device_map)
    assert isinstance(fly.encoder.layer[0].intermediate.dense, CompressedLinear)
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.inference_mode():
        assert torch.equal(raw_bits(fly(ids).last_hidden_state), raw_bits(dense(ids).last_hidden_state))
