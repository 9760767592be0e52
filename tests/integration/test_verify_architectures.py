"""``llmcomp verify`` compares stored shapes with the model config.json describes: a compressed save of
every architecture of the matrix verifies clean (no false refusal from renamed, tied or merged keys)."""

from __future__ import annotations

import pytest
import torch

from llmcomp_hf.config import LosslessConfig
from llmcomp_hf.stream.check import verify_checkpoint
from tests.integration.helpers import tiny_model


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2", "t5", "bert", "whisper", "vit", "llava", "mixtral"])
def test_a_compressed_save_verifies_clean(tmp_path, kind):
    model = tiny_model(kind, torch.bfloat16)
    model.save_pretrained(tmp_path / "dense")
    compressed = type(model).from_pretrained(tmp_path / "dense", quantization_config=LosslessConfig(min_numel=256))
    compressed.save_pretrained(tmp_path / "c")
    report = verify_checkpoint(tmp_path / "c")
    assert report.error is None and report.rows, report.error
