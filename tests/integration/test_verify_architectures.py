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


def test_a_remote_code_config_is_left_to_the_loader(tmp_path):
    """verify never runs remote code: with ``auto_map`` (trust_remote_code models) transformers' own config
    and shape checks are skipped, not turned into a refusal."""
    import json

    model = tiny_model("llama", torch.bfloat16)
    model.save_pretrained(tmp_path / "dense")
    compressed = type(model).from_pretrained(tmp_path / "dense", quantization_config=LosslessConfig(min_numel=256))
    compressed.save_pretrained(tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["model_type"] = "custom-llm"  # a type only its own code defines
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig",
                          "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    report = verify_checkpoint(tmp_path / "c")
    assert report.error is None and report.rows, report.error
