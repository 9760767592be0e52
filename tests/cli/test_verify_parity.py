"""`llmcomp verify` accepts exactly what the loaders accept: it runs the loaders' own validation.

Lossy transform headers go through ``format.lossy.decode_lossy`` (what ``from_pretrained`` runs);
the checkpoint's key set through the same check as ``format.reader.load_checkpoint``.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import llmcomp_hf
from llmcomp_hf.errors import FormatError
from llmcomp_hf.format.reader import load_checkpoint
from llmcomp_hf.format.shard import transform_key
from llmcomp_hf.stream.check import verify_checkpoint
from tests.cli.helpers import run_cli, small_checkpoint
from tests.integration.helpers import rewrite_shard, shard_files

LM_HEAD = "lm_head.weight"


@pytest.fixture(scope="module")
def lossy(tmp_path_factory):
    import transformers as tf

    root = tmp_path_factory.mktemp("parity")
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000)
    tf.LlamaForCausalLM(cfg).save_pretrained(root / "dense")
    preset = llmcomp_hf.CompressionConfig.from_preset("int8", min_numel=0)
    model = tf.AutoModelForCausalLM.from_pretrained(root / "dense", quantization_config=preset)
    model.save_pretrained(root / "int8", max_shard_size="150KB")
    return root / "int8"


@pytest.fixture(scope="module")
def lossless(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity-lossless")
    src = small_checkpoint(root / "src")
    from llmcomp_hf.cli import main

    assert main(["compress", str(src), str(root / "c"), "-q"]) == 0
    return root / "c"


def _file_of(folder, key):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return folder / index["weight_map"][key]


def _edit_transform(folder, name, change):
    key = transform_key(name)

    def edit(tensors, metadata):
        header = json.loads(bytes(tensors[key].numpy()).decode())
        change(header)
        tensors[key] = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)

    rewrite_shard(_file_of(folder, key), edit)


def _unknown_transform(h):
    h["meta"]["config"]["transform"] = "nonesuch"


def _extra_part(h):
    h["parts"] = sorted([*h["parts"], "weight.extra"])


def _missing_part(h):
    h["parts"] = h["parts"][:-1]


def _meta_dtype(h):
    h["meta"]["dtype"] = "float99"


def _meta_shape(h):
    h["meta"]["shape"] = [3, 5]


def _header_shape(h):
    h["shape"] = [h["shape"][1], h["shape"][0] + 1]


def _header_dtype(h):
    h["dtype"] = "int8"


@pytest.mark.parametrize("change", [_unknown_transform, _extra_part, _missing_part, _meta_dtype, _meta_shape,
                                   _header_shape, _header_dtype])
def test_verify_refuses_the_lossy_headers_the_loader_refuses(lossy, tmp_path, capsys, change):
    folder = shutil.copytree(lossy, tmp_path / "c")
    assert verify_checkpoint(folder).error is None
    _edit_transform(folder, LM_HEAD, change)
    with pytest.raises(FormatError, match=LM_HEAD):  # the loaders' verdict
        load_checkpoint(folder)
    error = verify_checkpoint(folder).error
    assert error is not None and LM_HEAD in error, error
    rc, _, err = run_cli(capsys, "verify", folder, "-q")
    assert rc == 1 and LM_HEAD in err and "Traceback" not in err
    rc, _, err = run_cli(capsys, "decompress", folder, tmp_path / "plain", "-q")
    assert rc == 1 and LM_HEAD in err and "Traceback" not in err


def test_verify_refuses_a_weight_stored_plain_and_compressed(lossless, tmp_path, capsys):
    folder = shutil.copytree(lossless, tmp_path / "c")
    file = _file_of(folder, "a.weight.llmcomp_data")
    rewrite_shard(file, lambda tensors, meta: tensors.update({"a.weight": torch.zeros(64, 64, dtype=torch.bfloat16)}))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["a.weight"] = file.name
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FormatError, match="a.weight"):
        load_checkpoint(folder)
    rc, _, err = run_cli(capsys, "verify", folder, "-q")
    assert rc == 1 and "a.weight" in err and "plain and compressed" in err, err


def test_verify_refuses_a_key_in_two_shards(lossless, tmp_path, capsys):
    folder = shutil.copytree(lossless, tmp_path / "c")
    first, last = shard_files(folder)[0], shard_files(folder)[-1]
    assert _file_of(folder, "norm.weight") == last
    rewrite_shard(first, lambda tensors, meta: tensors.update({"norm.weight": torch.ones(64, dtype=torch.bfloat16)}))
    with pytest.raises(FormatError, match="norm.weight"):
        load_checkpoint(folder)
    rc, _, err = run_cli(capsys, "verify", folder, "-q")
    assert rc == 1 and "norm.weight" in err and first.name in err and last.name in err, err
    rc, _, err = run_cli(capsys, "inspect", folder, "-q", "--no-bound")
    assert rc == 1 and "norm.weight" in err


def test_decode_tensors_uses_the_same_key_set_rule():
    from llmcomp_hf.codec import encode
    from llmcomp_hf.format.reader import decode_tensors
    from llmcomp_hf.format.shard import pack

    w = torch.randn(64, 64)
    tensors = {**pack("a.weight", encode(w)), "a.weight": w}
    with pytest.raises(FormatError, match="both plain and compressed.*a.weight.*f.safetensors"):
        decode_tensors(tensors, {"a.weight": "f.safetensors"})
    tensors = {**pack("a.weight", encode(w)), "a.weight.llmcomp_transform": torch.zeros(3, dtype=torch.uint8)}
    with pytest.raises(FormatError, match="both compressed and lossy"):
        decode_tensors(tensors)


def test_verify_refuses_an_index_naming_a_non_safetensors_file(lossless, tmp_path, capsys):
    """The quantizer refuses shards not named *.safetensors; verify must too, even when the file is one."""
    folder = shutil.copytree(lossless, tmp_path / "c")
    first = shard_files(folder)[0]
    first.rename(folder / "model-00001.bin")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: "model-00001.bin" if v == first.name else v for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    rc, _, err = run_cli(capsys, "verify", folder, "-q")
    assert rc == 1 and "model-00001.bin" in err, err
