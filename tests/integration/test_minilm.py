"""Real weights: all-MiniLM-L6-v2 compressed on load, saved, reloaded - bit for bit, fp32 and bf16."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from llmcomp_hf.config import LosslessConfig
from llmcomp_hf.format import load_checkpoint
from tests.integration.helpers import assert_same_state, raw_bits, read_config, shard_files, shard_metadata

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Entropy coding stores the exponent bits of bfloat16 weights in about 2.7 bits.",
    "Wie viele Gewichte hat dieses Modell?",
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.fixture(scope="module", params=sorted(DTYPES))
def saved(request, minilm_dir, tmp_path_factory):
    """(dtype, dense model, model compressed on load, folder it was saved to)."""
    dtype = DTYPES[request.param]
    dense = AutoModel.from_pretrained(minilm_dir, dtype=dtype)
    model = AutoModel.from_pretrained(minilm_dir, dtype=dtype, quantization_config=LosslessConfig())
    out = tmp_path_factory.mktemp(f"minilm_{request.param}")
    model.save_pretrained(out)
    return dtype, dense, model, out


def encode_sentences(model, minilm_dir):
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).last_hidden_state


def test_compress_on_load_keeps_weights_and_encodes_them(saved):
    dtype, dense, model, _ = saved
    assert_same_state(dense.state_dict(), model.state_dict())
    stats = model.hf_quantizer.compression_stats()
    assert stats["tensors"] == 39  # 36 Linear + pooler + word/position embeddings; the 2x384 token_type table is too small
    assert stats["ratio"] < (0.67 if dtype == torch.bfloat16 else 0.83)


def test_reload_is_bit_identical(saved, minilm_dir):
    dtype, dense, _, out = saved
    cfg = read_config(out)
    assert cfg["quantization_config"]["quant_method"] == "llmcomp"
    reloaded = AutoModel.from_pretrained(out)
    assert reloaded.dtype == dtype and isinstance(reloaded.config.quantization_config, LosslessConfig)
    assert_same_state(dense.state_dict(), reloaded.state_dict())
    assert torch.equal(raw_bits(encode_sentences(dense, minilm_dir)), raw_bits(encode_sentences(reloaded, minilm_dir)))


def test_checkpoint_is_smaller_and_readable_without_transformers(saved, minilm_dir):
    dtype, dense, _, out = saved
    (shard,) = shard_files(out)
    original = (minilm_dir / "model.safetensors").stat().st_size * dtype.itemsize / 4
    assert shard.stat().st_size <= (0.67 if dtype == torch.bfloat16 else 0.83) * original
    assert_same_state(dense.state_dict(), load_checkpoint(out))


def test_resaving_a_loaded_checkpoint_gives_the_same_shards(saved, tmp_path):
    _, _, _, out = saved
    AutoModel.from_pretrained(out).save_pretrained(tmp_path)  # decoded on load, re-encoded on save
    (a,), (b,) = shard_files(out), shard_files(tmp_path)
    assert shard_metadata(a) == shard_metadata(b)
    assert_same_state(load_file(a), load_file(b))  # the encoder is deterministic: same bytes per tensor
    assert read_config(tmp_path) == read_config(out)


@pytest.mark.parametrize("saved", ["fp32"], indirect=True)
def test_dtype_argument_is_respected(saved, minilm_dir):
    _, _, _, out = saved
    want = AutoModel.from_pretrained(minilm_dir, dtype=torch.bfloat16)
    got = AutoModel.from_pretrained(out, dtype=torch.bfloat16)
    assert_same_state(want.state_dict(), got.state_dict())
