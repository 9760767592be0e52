"""Paths that once loaded silently wrong weights: each ends bit-identical or in a named FormatError."""

from __future__ import annotations

import logging

import pytest
import torch
import transformers as tf
from safetensors import safe_open

import llmcomp_hf
from llmcomp_hf.cli import main
from llmcomp_hf.config import LosslessConfig
from llmcomp_hf.errors import FormatError
from llmcomp_hf.format import load_checkpoint
from tests.integration.helpers import assert_same_state, raw_bits, rewrite_shard, shard_files, tiny_model

CFG = LosslessConfig(min_numel=256)
TARGET = "model.layers.0.mlp.up_proj.weight"
LOADS = {  # how the compressed checkpoint is loaded
    "prefetch": ("load", "1"),
    "no-prefetch": ("load", "0"),
    "on_the_fly": ("on_the_fly", "1"),
}


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    root = tmp_path_factory.mktemp("never-silent")
    tiny_model("llama", torch.bfloat16).save_pretrained(root / "dense")
    tf.LlamaForCausalLM.from_pretrained(root / "dense", quantization_config=CFG).save_pretrained(root / "c")
    return root


def _load(folder, how, monkeypatch, cls=tf.LlamaForCausalLM):
    mode, prefetch = LOADS[how]
    monkeypatch.setenv("LLMCOMP_PREFETCH", prefetch)
    with llmcomp_hf.load_options(decode=mode):
        return cls.from_pretrained(folder)


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("how", sorted(LOADS))
def test_a_renamed_header_key_is_refused_naming_the_weight(compressed, tmp_path, how, monkeypatch):
    folder = _copy(compressed / "c", tmp_path / "c")
    key = f"{TARGET}.llmcomp_header"
    rewrite_shard(shard_files(folder)[0], lambda t, md: t.__setitem__(key.replace("up_proj", "up_prxj"), t.pop(key)))
    with pytest.raises(FormatError, match=rf"{TARGET}.*missing '{TARGET}.llmcomp_header'.*model.safetensors"):
        _load(folder, how, monkeypatch)


@pytest.mark.parametrize("how", sorted(LOADS))
def test_a_weight_whose_parts_match_no_parameter_is_refused(compressed, tmp_path, how, monkeypatch):
    folder = _copy(compressed / "c", tmp_path / "c")

    def rename(tensors, metadata):
        for part in ("data", "index", "header"):
            key = f"{TARGET}.llmcomp_{part}"
            tensors[key.replace("up_proj", "up_prxj")] = tensors.pop(key)

    rewrite_shard(shard_files(folder)[0], rename)
    with pytest.raises(FormatError, match=r"match no parameter of LlamaForCausalLM.*up_prxj.*model.safetensors"):
        _load(folder, how, monkeypatch)


@pytest.mark.parametrize("how", sorted(LOADS))
def test_a_head_the_model_class_lacks_is_left_out_with_a_warning(compressed, how, monkeypatch, caplog):
    """A base model from a checkpoint saved with a head: transformers leaves the head's keys unused by design."""
    dense = tf.LlamaModel.from_pretrained(compressed / "dense")
    with caplog.at_level(logging.WARNING, logger="llmcomp_hf.quantizer"):
        model = _load(compressed / "c", how, monkeypatch, cls=tf.LlamaModel)
    assert "lm_head.weight" in caplog.text
    if how != "on_the_fly":
        assert_same_state(dense.state_dict(), model.state_dict())
    ids = torch.tensor([[3, 5, 7]])
    with torch.no_grad():
        assert torch.equal(raw_bits(dense(ids).last_hidden_state), raw_bits(model(ids).last_hidden_state))


def test_on_the_fly_dequantize_gives_a_plain_model_that_saves_plain(compressed, tmp_path):
    with llmcomp_hf.load_options(decode="on_the_fly"):
        model = tf.LlamaForCausalLM.from_pretrained(compressed / "c")
    plain = model.dequantize()
    assert type(plain.model.layers[0].mlp.up_proj) is torch.nn.Linear
    plain.save_pretrained(tmp_path / "plain")
    reloaded = tf.LlamaForCausalLM.from_pretrained(tmp_path / "plain")
    assert getattr(reloaded.config, "quantization_config", None) is None
    assert_same_state(tf.LlamaForCausalLM.from_pretrained(compressed / "dense").state_dict(), reloaded.state_dict())


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixtral")
    tiny_model("mixtral", torch.bfloat16).save_pretrained(root / "dense")
    return root


def test_moe_experts_compressed_from_python_exactly_as_the_cli_does(mixtral, tmp_path):
    tf.MixtralForCausalLM.from_pretrained(mixtral / "dense", quantization_config=CFG).save_pretrained(tmp_path / "py")
    assert main(["compress", str(mixtral / "dense"), str(tmp_path / "cli"), "-q", "--min-numel", "256"]) == 0

    def stored(folder):
        out = {}
        for file in shard_files(folder):
            with safe_open(str(file), "pt") as handle:
                out.update({k: handle.get_tensor(k) for k in handle.keys()})
        return out

    py, cli = stored(tmp_path / "py"), stored(tmp_path / "cli")
    experts = sorted(k for k in cli if ".experts." in k)
    assert experts and all(k.rpartition(".")[2].startswith("llmcomp_") for k in experts)
    assert experts == sorted(k for k in py if ".experts." in k)
    for key in experts:  # same encoder, same bytes
        assert torch.equal(raw_bits(py[key]), raw_bits(cli[key])), key
    # (the router's 4 x 64 weight is a Linear only by name: the CLI's name rule takes it, module types do not)
    assert_same_state(load_checkpoint(mixtral / "dense"), load_checkpoint(tmp_path / "py"))


@pytest.mark.parametrize("mode", ["load", "on_the_fly"])
def test_a_reloaded_moe_model_saves_again_bit_exactly(mixtral, tmp_path, mode):
    tf.MixtralForCausalLM.from_pretrained(mixtral / "dense", quantization_config=CFG).save_pretrained(tmp_path / "c")
    with llmcomp_hf.load_options(decode=mode):
        model = tf.MixtralForCausalLM.from_pretrained(tmp_path / "c")
    model.save_pretrained(tmp_path / "again")
    assert_same_state(load_checkpoint(mixtral / "dense"), load_checkpoint(tmp_path / "again"))


@pytest.mark.parametrize("how", sorted(LOADS))
def test_a_changed_plain_tensor_is_refused_naming_it(compressed, tmp_path, how, monkeypatch):
    """Norms and biases stay plain; their checksums in the shard metadata are checked on load."""
    from llmcomp_hf.errors import ChecksumMismatchError

    folder = _copy(compressed / "c", tmp_path / "c")

    def flip(tensors, metadata):
        assert "llmcomp.plain.model.norm.weight" in metadata
        tensors["model.norm.weight"].view(torch.int16)[0] ^= 1

    rewrite_shard(shard_files(folder)[0], flip)
    with pytest.raises(ChecksumMismatchError, match=r"model\.norm\.weight.*model.safetensors"):
        _load(folder, how, monkeypatch)
    with llmcomp_hf.load_options(verify=False):  # the documented way to skip checks
        tf.LlamaForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("how", sorted(LOADS))
def test_a_header_declaring_another_shape_is_refused_before_decoding(compressed, tmp_path, how, monkeypatch):
    """A few bytes can declare gigabytes: the declared shape is compared with the parameter's first."""
    import json

    import numpy as np

    folder = _copy(compressed / "c", tmp_path / "c")
    key = f"{TARGET}.llmcomp_header"

    def inflate(tensors, metadata):
        header = json.loads(bytes(tensors[key].numpy()).decode())
        header["shape"] = [1 << 20, 1 << 14]
        tensors[key] = torch.from_numpy(np.frombuffer(json.dumps(header).encode(), np.uint8).copy())

    rewrite_shard(shard_files(folder)[0], inflate)
    with pytest.raises(FormatError, match=rf"{TARGET}"):  # the declared shape, or an index too short for it
        _load(folder, how, monkeypatch)


def test_on_the_fly_with_another_dtype_decodes_at_load_and_casts(compressed, monkeypatch):
    """A bf16 checkpoint loaded on the fly with dtype=float32: the compressed layers must not compute in
    bf16 against float32 activations; each decoded weight is cast, as a decoded load casts it once."""
    dense = tf.LlamaForCausalLM.from_pretrained(compressed / "dense", dtype=torch.float32)
    with llmcomp_hf.load_options(decode="on_the_fly"):
        model = tf.LlamaForCausalLM.from_pretrained(compressed / "c", dtype=torch.float32)
    ids = torch.tensor([[3, 5, 7]])
    with torch.no_grad():
        assert torch.equal(raw_bits(dense(ids).logits), raw_bits(model(ids).logits))


def test_a_renamed_plain_key_is_refused_by_every_reader(compressed, tmp_path, monkeypatch, capsys):
    """A norm stored under another name would load as a missing (random) weight: its checksum entry says
    it belongs in the checkpoint, so every reader refuses (found by the fuzz campaign)."""
    from tests.cli.helpers import run_cli

    folder = _copy(compressed / "c", tmp_path / "c")
    rewrite_shard(shard_files(folder)[0], lambda t, md: t.__setitem__("model.norm.weigxt", t.pop("model.norm.weight")))
    for how in sorted(LOADS):
        with pytest.raises(FormatError, match=r"model\.norm\.weight.*in no shard"):
            _load(folder, how, monkeypatch)
    with pytest.raises(FormatError, match=r"model\.norm\.weight"):
        load_checkpoint(folder)
    for command in (["verify", str(folder)], ["decompress", str(folder), str(tmp_path / "out")]):
        rc, _, err = run_cli(capsys, *command, "-q")
        assert rc == 1 and "model.norm.weight" in err, err


def test_a_renamed_lossy_transform_key_is_refused_after_llmcomp_compress(tmp_path, capsys):
    """Without its transform header a lossy weight's parts would decode as unrelated tensors (fuzz campaign)."""
    from tests.cli.helpers import run_cli

    tiny_model("llama", torch.bfloat16).save_pretrained(tmp_path / "dense")
    rc, _, err = run_cli(capsys, "compress", str(tmp_path / "dense"), str(tmp_path / "c"), "-q", "--config", "int8",
                         "--min-numel", "256")
    assert rc == 0, err
    key = next(k for f in shard_files(tmp_path / "c") for k in safe_open(str(f), "pt").keys()
               if k.endswith(".llmcomp_transform"))
    shard = next(f for f in shard_files(tmp_path / "c") if key in safe_open(str(f), "pt").keys())
    rewrite_shard(shard, lambda t, md: t.__setitem__(key + "x", t.pop(key)))
    with pytest.raises(FormatError, match="in no shard"):
        load_checkpoint(tmp_path / "c")
    rc, _, err = run_cli(capsys, "verify", str(tmp_path / "c"), "-q")
    assert rc == 1 and key in err, err


@pytest.mark.parametrize("cls", [tf.AutoModelForCausalLM, tf.LlamaForCausalLM], ids=["auto", "model-class"])
@pytest.mark.parametrize("how", sorted(LOADS))
@pytest.mark.parametrize("damage", ["values-not-strings", "deep", "not-utf8"])
def test_a_damaged_index_is_a_format_error_before_transformers_parses_it(tmp_path, how, damage, cls, monkeypatch):
    """transformers' own parse of model.safetensors.index.json gave TypeError/RecursionError (fuzz campaign);
    a model class's own from_pretrained (no ``_name_or_path`` on its config yet) too."""
    import json

    tiny_model("llama", torch.bfloat16).save_pretrained(tmp_path / "dense")
    model = tf.LlamaForCausalLM.from_pretrained(tmp_path / "dense", quantization_config=CFG)
    model.save_pretrained(tmp_path / "c", max_shard_size="100KB")
    index = tmp_path / "c" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    if damage == "values-not-strings":
        data["weight_map"][next(iter(data["weight_map"]))] = {"x": 1}
        index.write_text(json.dumps(data))
    elif damage == "deep":
        index.write_bytes(b'{"weight_map": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    else:
        index.write_bytes(b"\xff\xfe" + index.read_bytes())
    with pytest.raises(FormatError, match="model.safetensors.index.json"):
        _load(tmp_path / "c", how, monkeypatch, cls=cls)


def test_readers_take_the_files_transformers_takes(compressed, tmp_path):
    """model.safetensors wins over an index, as in transformers; an index with no entries is damage
    (verify once checked zero tensors of such a folder and said ok: fuzz campaign)."""
    import json

    from llmcomp_hf.stream.check import verify_checkpoint

    folder = _copy(compressed / "c", tmp_path / "c")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {}}))
    report = verify_checkpoint(folder)
    assert report.error is None and len(report.rows) == len(load_checkpoint(compressed / "c"))
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    assert "non-empty 'weight_map'" in str(verify_checkpoint(folder).error)
    with pytest.raises(FormatError, match="non-empty 'weight_map'"):
        load_checkpoint(folder)
