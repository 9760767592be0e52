"""Helpers for the transformers-integration tests: tiny models, raw-bit comparisons, shard surgery."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llmcomp_hf._register import install

install()  # what `import llmcomp_hf` does (test_guard.py checks that); explicit here for clarity

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000)


def raw_bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns as an integer tensor (NaN payloads, -0.0 compare exactly)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bool:
        return t.view(torch.uint8)
    return t.view(_INT_OF_SIZE[t.element_size()])


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Same names, dtypes, shapes and bit patterns."""
    assert sorted(a) == sorted(b), set(a) ^ set(b)
    for name in a:
        x, y = a[name], b[name]
        assert x.dtype == y.dtype and x.shape == y.shape, (name, x.dtype, y.dtype, x.shape, y.shape)
        assert torch.equal(raw_bits(x), raw_bits(y)), name


def tiny_model(kind: str, dtype: torch.dtype = torch.float32, tie: bool | None = None, seed: int = 0):
    """A randomly initialised 2-layer model of an architecture family, built from its config."""
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "llama":
        cfg = tf.LlamaConfig(**TINY, num_key_value_heads=2, tie_word_embeddings=bool(tie))
        model = tf.LlamaForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(**TINY, num_key_value_heads=2, tie_word_embeddings=bool(tie))
        model = tf.Qwen2ForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=128,
                            tie_word_embeddings=True if tie is None else tie)
        model = tf.GPT2LMHeadModel(cfg)
    elif kind == "t5":
        cfg = tf.T5Config(d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4, vocab_size=1000,
                          decoder_start_token_id=0, tie_word_embeddings=True if tie is None else tie)
        model = tf.T5ForConditionalGeneration(cfg)
    elif kind == "bert":
        cfg = tf.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            vocab_size=1000, max_position_embeddings=64)
        model = tf.BertModel(cfg)
    elif kind == "whisper":
        cfg = tf.WhisperConfig(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                               decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=1000,
                               num_mel_bins=16, max_source_positions=32, max_target_positions=32,
                               decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=1)
        model = tf.WhisperForConditionalGeneration(cfg)
    elif kind == "vit":
        cfg = tf.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                           image_size=32, patch_size=8, num_labels=3)
        model = tf.ViTForImageClassification(cfg)
    elif kind == "llava":
        vision = tf.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                     image_size=32, patch_size=8, projection_dim=64)
        text = tf.LlamaConfig(**TINY, num_key_value_heads=2)
        cfg = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_id=999, projector_hidden_act="gelu",
                             vision_feature_layer=-1, vision_feature_select_strategy="full")
        model = tf.LlavaForConditionalGeneration(cfg)
    elif kind == "mixtral":
        cfg = tf.MixtralConfig(**TINY, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                               tie_word_embeddings=bool(tie))
        model = tf.MixtralForCausalLM(cfg)
    else:
        raise ValueError(kind)
    return model.to(dtype).eval()


def shard_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.safetensors"))


def shard_metadata(file: Path) -> dict[str, str]:
    with safe_open(str(file), framework="pt") as handle:
        return dict(handle.metadata() or {})


def rewrite_shard(file: Path, edit) -> None:
    """Load a shard, let ``edit(tensors, metadata)`` change it in place, write it back."""
    with safe_open(str(file), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    edit(tensors, metadata)
    save_file(tensors, str(file), metadata=metadata)


def read_config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())
