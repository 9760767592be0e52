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


# -- coverage: tied embeddings, shards, dtypes, subclasses, MoE experts ------------------------------------------

CFG = llmcomp_hf.LosslessConfig(min_numel=256)
TIED = {  # tiny model with tied embeddings: (model class, how to build it)
    "llama": lambda: tiny_model("llama", torch.bfloat16, tie=True),
    "gpt2": lambda: tiny_model("gpt2", torch.bfloat16),
    "t5": lambda: tiny_model("t5", torch.bfloat16),
    "bert-mlm": lambda: _bert_mlm(),
}


def _bert_mlm():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        vocab_size=1000, max_position_embeddings=64)
    return tf.BertForMaskedLM(cfg).to(torch.bfloat16).eval()


def _compressed(model, root: Path, **save_kwargs) -> tuple[type, Path]:
    """(model class, folder of its llmcomp checkpoint) for a tiny model."""
    cls = type(model)
    model.save_pretrained(root / "dense")
    cls.from_pretrained(root / "dense", quantization_config=CFG).save_pretrained(root / "c", **save_kwargs)
    return cls, root / "c"


def _load(cls, folder: Path, mode: str, **kwargs):
    with llmcomp_hf.load_options(decode=mode):
        return cls.from_pretrained(folder, **kwargs)


def _logits(model, ids=torch.tensor([[5, 17, 42, 7, 99]])) -> torch.Tensor:
    args = {"input_ids": ids}
    if model.config.is_encoder_decoder:
        args["decoder_input_ids"] = ids[:, :3]
    with torch.no_grad():
        return raw_bits(model(**args).logits)


def _encoded(model) -> list[EncodedWeight]:
    return [m for m in model.modules() if isinstance(m, EncodedWeight)]


@pytest.mark.parametrize("kind", sorted(TIED))
def test_tied_embeddings_stay_compressed_once(kind: str, tmp_path) -> None:
    """A tied copy (lm_head) computes with its source's encoded weight: one copy in memory, and the save is
    the checkpoint transformers expects (the tied key once)."""
    from safetensors.torch import load_file

    cls, folder = _compressed(TIED[kind](), tmp_path)
    decoded = cls.from_pretrained(folder)
    fly = _load(cls, folder, "on_the_fly")
    assert decoded.all_tied_weights_keys
    for copy, source in decoded.all_tied_weights_keys.items():
        if copy.endswith(".weight"):
            layer = fly.get_submodule(copy.rpartition(".")[0])
            assert isinstance(layer, (CompressedLinear, CompressedEmbedding)), copy
            assert layer.weight is fly.get_submodule(source), copy
    assert len(_encoded(fly)) == len(fly.hf_quantizer.inventory.weights)  # each stored weight held once
    assert not any(p.dim() == 2 and p.shape[0] == 1000 for p in fly.parameters())  # no dense vocab table
    assert fly.get_output_embeddings().weight is fly.get_input_embeddings().weight
    fly.tie_weights(recompute_mapping=False)  # what transformers' own loading and init_weights call
    assert torch.equal(_logits(decoded), _logits(fly))

    fly.save_pretrained(tmp_path / "again")
    assert_same_state(load_file(shard_files(folder)[0]), load_file(shard_files(tmp_path / "again")[0]))
    for mode in ("load", "on_the_fly"):
        assert torch.equal(_logits(decoded), _logits(_load(cls, tmp_path / "again", mode)))


def test_tied_dequantize_gives_one_tied_parameter(tmp_path) -> None:
    cls, folder = _compressed(tiny_model("llama", torch.bfloat16, tie=True), tmp_path)
    decoded = cls.from_pretrained(folder)
    fly = _load(cls, folder, "on_the_fly")
    assert isinstance(fly.lm_head, CompressedLinear) and fly.all_tied_weights_keys == {}  # the tie is the shared encoding
    plain = fly.dequantize()
    assert plain.lm_head.weight is plain.model.embed_tokens.weight
    assert plain.all_tied_weights_keys == decoded.all_tied_weights_keys
    assert_same_state(decoded.state_dict(), plain.state_dict())
    assert torch.equal(_logits(decoded.dequantize().half()), _logits(plain.half()))  # a plain model converts as usual


def test_half_on_a_compressed_model_acts_as_on_a_decoded_one(tmp_path) -> None:
    """transformers refuses ``.half()``/``.float()`` on any quantized model, at the call; if it ever allows
    them, the on-the-fly model must convert as the decoded one does."""
    cls, folder = _compressed(tiny_model("llama", torch.bfloat16), tmp_path)
    decoded, fly = cls.from_pretrained(folder), _load(cls, folder, "on_the_fly")
    for convert in ("half", "float"):
        try:
            getattr(decoded, convert)()
        except ValueError:
            with pytest.raises(ValueError, match=convert):
                getattr(fly, convert)()
        else:
            getattr(fly, convert)()
        assert torch.equal(_logits(decoded), _logits(fly)), convert


def test_compress_on_load_keeps_tied_embeddings_compressed(tmp_path) -> None:
    model = tiny_model("llama", torch.bfloat16, tie=True)
    cls, folder = _compressed(model, tmp_path)
    dense = cls.from_pretrained(tmp_path / "dense")
    fly = _load(cls, tmp_path / "dense", "on_the_fly", quantization_config=CFG)
    assert isinstance(fly.lm_head, CompressedLinear) and fly.lm_head.weight is fly.model.embed_tokens.weight
    assert torch.equal(_logits(dense), _logits(fly))
    fly.save_pretrained(tmp_path / "again")
    assert_same_state(cls.from_pretrained(folder).state_dict(), cls.from_pretrained(tmp_path / "again").state_dict())


@pytest.mark.parametrize("mode", ["load", "on_the_fly"])
def test_minilm_parts_straddling_shards(minilm_bf16, minilm_dir, mode: str, tmp_path) -> None:
    """Shards so small that weights have their data, index and header in different files."""
    import json

    from transformers import AutoModel, AutoTokenizer

    dense_dir, packed_dir = minilm_bf16
    AutoModel.from_pretrained(packed_dir).save_pretrained(tmp_path / "small", max_shard_size="1MB")
    files_of: dict[str, set[str]] = {}
    for key, file in json.loads((tmp_path / "small" / "model.safetensors.index.json").read_text())["weight_map"].items():
        files_of.setdefault(key.rpartition(".llmcomp_")[0], set()).add(file)
    assert any(len(files) > 1 for files in files_of.values())
    model = _load(AutoModel, tmp_path / "small", mode)
    if mode == "on_the_fly":
        assert len(_encoded(model)) == len(model.hf_quantizer.inventory.weights)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    assert torch.equal(raw_bits(_embed(AutoModel.from_pretrained(dense_dir), tokenizer)), raw_bits(_embed(model, tokenizer)))


def test_other_dtype_stays_compressed_and_is_cast_per_forward(tmp_path) -> None:
    """dtype=float32 for a bf16 checkpoint: the bytes stay as stored, each decode is cast; the outputs and
    the save are those of the decoded model."""
    from safetensors.torch import load_file

    cls, folder = _compressed(tiny_model("llama", torch.bfloat16), tmp_path)
    decoded = cls.from_pretrained(folder, dtype=torch.float32)
    fly = _load(cls, folder, "on_the_fly", dtype=torch.float32)
    assert isinstance(fly.model.layers[0].mlp.down_proj, CompressedLinear)
    assert fly.model.layers[0].mlp.down_proj.weight.dtype == torch.float32
    assert len(_encoded(fly)) == len(fly.hf_quantizer.inventory.weights)
    assert torch.equal(_logits(decoded), _logits(fly))
    decoded.save_pretrained(tmp_path / "decoded")
    fly.save_pretrained(tmp_path / "fly")
    assert_same_state(load_file(shard_files(tmp_path / "decoded")[0]), load_file(shard_files(tmp_path / "fly")[0]))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_to_dtype_converts_as_the_decoded_model_does(kind: str, tmp_path) -> None:
    """``.to(dtype)`` (and ``.half()`` on a submodule) keeps the bytes encoded; each conversion is replayed
    after decoding, so ``.to(float16).to(float32)`` rounds through float16 exactly as a decoded weight does."""
    cls, folder = _compressed(tiny_model(kind, torch.bfloat16), tmp_path)
    decoded = cls.from_pretrained(folder)
    fly = _load(cls, folder, "on_the_fly")
    for dtype in (torch.float16, torch.float32, torch.bfloat16, torch.float32):
        decoded.to(dtype)
        fly.to(dtype)
        assert fly.dtype == dtype
        assert torch.equal(_logits(decoded), _logits(fly)), dtype
    decoded.base_model.half()
    fly.base_model.half()
    decoded.lm_head.half()
    fly.lm_head.half()
    assert torch.equal(_logits(decoded), _logits(fly))
    decoded.save_pretrained(tmp_path / "decoded")
    fly.save_pretrained(tmp_path / "fly")
    assert_same_state(cls.from_pretrained(tmp_path / "decoded").state_dict(), cls.from_pretrained(tmp_path / "fly").state_dict())


def test_converting_the_encoded_bytes_is_refused(tmp_path) -> None:
    from llmcomp_hf.errors import LlmcompError

    cls, folder = _compressed(tiny_model("llama", torch.bfloat16), tmp_path)
    fly = _load(cls, folder, "on_the_fly")
    want = _logits(fly)
    with pytest.raises(LlmcompError, match=r"down_proj.*model.to\(dtype\)"):
        fly.model.layers[0].mlp.down_proj.type(torch.float16)
    assert torch.equal(want, _logits(fly))


class _NotedLinear(torch.nn.Linear):
    """A Linear subclass that computes as nn.Linear (no forward of its own)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.note = "kept"


class _DoubledLinear(torch.nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def _llama_with_subclasses():
    import transformers as tf

    class LlamaWithSubclasses(tf.LlamaForCausalLM):
        def __init__(self, config) -> None:
            super().__init__(config)
            mlp = self.model.layers[0].mlp
            mlp.down_proj = _NotedLinear(mlp.down_proj.in_features, mlp.down_proj.out_features, bias=False)
            mlp.up_proj = _DoubledLinear(mlp.up_proj.in_features, mlp.up_proj.out_features, bias=False)

    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=1000)
    return LlamaWithSubclasses(config).to(torch.bfloat16).eval()


def test_subclasses_stay_compressed_when_they_compute_as_their_base(tmp_path) -> None:
    cls, folder = _compressed(_llama_with_subclasses(), tmp_path)
    decoded = cls.from_pretrained(folder)
    fly = _load(cls, folder, "on_the_fly")
    mlp = fly.model.layers[0].mlp
    assert isinstance(mlp.down_proj, CompressedLinear)  # nn.Linear's forward: kept compressed
    assert type(mlp.up_proj) is _DoubledLinear and isinstance(mlp.up_proj.weight, torch.nn.Parameter)  # decoded at load
    assert torch.equal(_logits(decoded), _logits(fly))
    plain = fly.dequantize()
    down = plain.model.layers[0].mlp.down_proj
    assert type(down) is _NotedLinear and down.note == "kept"
    assert_same_state(decoded.state_dict(), plain.state_dict())


def test_whisper_decoder_positions_are_decoded_at_load(tmp_path) -> None:
    """WhisperPositionalEmbedding slices its table by position (its own forward): decoded at load (a few
    hundred rows); every other stored weight of Whisper stays compressed."""
    cls, folder = _compressed(tiny_model("whisper", torch.bfloat16), tmp_path)
    fly = _load(cls, folder, "on_the_fly")
    positions = fly.model.decoder.embed_positions
    assert type(positions).__name__ == "WhisperPositionalEmbedding" and isinstance(positions.weight, torch.nn.Parameter)
    assert isinstance(fly.model.encoder.embed_positions, CompressedEmbedding)
    assert len(_encoded(fly)) == len(fly.hf_quantizer.inventory.weights) - 1


def test_moe_experts_stay_compressed_and_merge_per_forward(tmp_path) -> None:
    from llmcomp_hf.compressed_fused import CompressedFused

    cls, folder = _compressed(tiny_model("mixtral", torch.bfloat16), tmp_path)
    decoded = cls.from_pretrained(folder)
    fly = _load(cls, folder, "on_the_fly")
    assert isinstance(fly.model.layers[0].mlp.experts, CompressedFused)
    assert not any(p.dim() == 3 for p in fly.parameters())
    assert len(_encoded(fly)) == len(fly.hf_quantizer.inventory.weights)
    ids = torch.tensor([[5, 17, 42, 7, 99]])
    assert torch.equal(_logits(decoded, ids), _logits(fly, ids))
    with torch.no_grad():
        assert torch.equal(decoded.generate(ids, max_new_tokens=4, do_sample=False),
                           fly.generate(ids, max_new_tokens=4, do_sample=False))
    decoded.to(torch.float32)
    fly.to(torch.float32)
    assert torch.equal(_logits(decoded, ids), _logits(fly, ids))
    plain = fly.dequantize()
    assert type(plain.model.layers[0].mlp.experts).__name__ == "MixtralExperts"
    assert_same_state(decoded.state_dict(), plain.state_dict())


def test_moe_experts_that_merge_into_the_wrong_shape_are_refused_at_load(tmp_path) -> None:
    """Expert 0's w1 and w2 swapped in the shard: each decodes, but they cannot merge into the fused
    parameters; refused when loading, naming the parameter, not at the first forward."""
    from llmcomp_hf.errors import FormatError

    from .helpers import rewrite_shard

    cls, folder = _compressed(tiny_model("mixtral", torch.bfloat16), tmp_path)
    prefix = "model.layers.0.block_sparse_moe.experts.0"

    def swap(tensors, metadata):
        for part in ("data", "index", "header"):
            a, b = f"{prefix}.w1.weight.llmcomp_{part}", f"{prefix}.w2.weight.llmcomp_{part}"
            tensors[a], tensors[b] = tensors[b], tensors[a]

    rewrite_shard(shard_files(folder)[0], swap)
    with pytest.raises(FormatError, match=r"experts\.(gate_up_proj|down_proj).*experts\.0\.w"):
        _load(cls, folder, "on_the_fly")
