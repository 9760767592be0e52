"""Hub tags set on load say what was done, and a lossy model is never tagged lossless."""

from __future__ import annotations

import torch

import llmcomp_hf

from .helpers import tiny_model


def test_model_tags_lossless_and_lossy(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    tiny_model("llama", torch.float32).save_pretrained(tmp_path / "dense")
    lossless = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", quantization_config=llmcomp_hf.LosslessConfig(min_numel=0))
    assert lossless.model_tags[:2] == ["llmcomp", "lossless"]
    lossy = AutoModelForCausalLM.from_pretrained(
        tmp_path / "dense", quantization_config=llmcomp_hf.CompressionConfig.from_preset("int8", min_numel=0)
    )
    assert "lossless" not in lossy.model_tags and lossy.model_tags[:2] == ["llmcomp", "lossy"]
    lossless.save_pretrained(tmp_path / "packed")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "packed").model_tags[:2] == ["llmcomp", "lossless"]
