"""`llmcomp verify` checks every entropy-coded part of a lossy checkpoint too."""

from __future__ import annotations

import json

import torch

import llmcomp_hf
from llmcomp_hf.stream.check import verify_checkpoint


def test_verify_lossy_checkpoint(tmp_path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000)
    tf.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "dense")
    preset = llmcomp_hf.CompressionConfig.from_preset("int8", min_numel=0)
    tf.AutoModelForCausalLM.from_pretrained(tmp_path / "dense", quantization_config=preset).save_pretrained(tmp_path / "int8")
    report = verify_checkpoint(tmp_path / "int8")
    assert report.error is None, report.error
    shard = next((tmp_path / "int8").glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    name = next(k for k in sorted(header) if k.endswith(".llmcomp_data") and "lm_head" in k)
    lo, hi = header[name]["data_offsets"]
    data[8 + header_len + (lo + hi) // 2] ^= 0xFF  # damage one entropy-coded part of a lossy weight
    shard.write_bytes(bytes(data))
    error = verify_checkpoint(tmp_path / "int8").error
    assert error is not None and "lm_head" in error, error
