"""Bugs the fuzz campaign found, each pinned on the smallest input that showed it."""

from __future__ import annotations

import json
import shutil

import pytest
import transformers

from llmcomp_hf.errors import FormatError
from llmcomp_hf.stream.compress import decompress_checkpoint

from .mutate_files import join_safetensors, replace_tensor, split_safetensors


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "ckpt")


def test_decompress_refuses_a_header_nested_too_deeply(fuzz_checkpoints, tmp_path):
    # was: RecursionError from json.loads in stream/expand.py _header_json (campaign seed 0, input 117)
    folder = _copy(fuzz_checkpoints["lossy"], tmp_path)
    shard = sorted(folder.glob("*.safetensors"))[0]
    header, body = split_safetensors(shard.read_bytes())
    key = next(k for k in header if k.endswith(".llmcomp_header"))
    deep = b'{"deep":' + b"[" * 100000 + b"]" * 100000 + b"}"
    shard.write_bytes(join_safetensors(*replace_tensor(header, body, key, deep)))
    with pytest.raises(FormatError, match="nested too deeply"):
        decompress_checkpoint(folder, tmp_path / "out")


@pytest.mark.parametrize("edit", [{"coder": "zstd"}, {"block_size": "big"}, {"stages": [{"transform": {}}]},
                                  {"stages": [{"transform": "nf4", "version": -4096}]}])
def test_from_pretrained_names_a_damaged_quantization_config(fuzz_checkpoints, tmp_path, edit):
    # was: a bare ValueError (config.py, CompressionConfig.from_dict) from from_pretrained (seed 0, inputs 130, 187)
    folder = _copy(fuzz_checkpoints["lossless"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"].update(edit)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError, match="config.json"):
        transformers.AutoModelForCausalLM.from_pretrained(folder)


def test_decompress_refuses_a_weight_whose_data_part_is_gone(fuzz_checkpoints, tmp_path):
    # was: the weight silently left out of the plain checkpoint (stream/expand.py CompressedMap; seed 0, input 124)
    folder = _copy(fuzz_checkpoints["lossless"], tmp_path)
    shard = sorted(folder.glob("*.safetensors"))[0]
    header, body = split_safetensors(shard.read_bytes())
    key = next(k for k in header if k.endswith(".llmcomp_data"))
    header[key + "x"] = header.pop(key)
    shard.write_bytes(join_safetensors(header, body))
    with pytest.raises(FormatError, match="missing"):
        decompress_checkpoint(folder, tmp_path / "out")


@pytest.mark.parametrize("shape", [7, None, "x", [1.5], [[2]]])
def test_verify_and_decompress_refuse_a_header_field_of_the_wrong_type(fuzz_checkpoints, tmp_path, shape):
    # was: TypeError in stream/check.py _rows and stream/expand.py decompress_into (seed 3, input 655)
    from llmcomp_hf.stream.check import verify_checkpoint

    folder = _copy(fuzz_checkpoints["lossless"], tmp_path)
    shard = sorted(folder.glob("*.safetensors"))[-1]
    header, body = split_safetensors(shard.read_bytes())
    key = next(k for k in header if k.endswith(".llmcomp_header"))
    stored = json.loads(body[slice(*header[key]["data_offsets"])])
    new = json.dumps(dict(stored, shape=shape), separators=(",", ":"), sort_keys=True).encode()
    shard.write_bytes(join_safetensors(*replace_tensor(header, body, key, new)))
    assert "shape" in verify_checkpoint(folder).error
    with pytest.raises(FormatError, match="shape"):
        decompress_checkpoint(folder, tmp_path / "out")


@pytest.mark.parametrize("field,value", [("stored_bytes", [1]), ("stored_bytes", "12"), ("bits_per_weight", {}),
                                         ("stored_bytes", -1)])
def test_decompress_refuses_a_transform_header_figure_of_the_wrong_type(fuzz_checkpoints, tmp_path, field, value):
    # was: TypeError from float() in stream/recon.py reconstruction_figures (seed 3, input 1362)
    folder = _copy(fuzz_checkpoints["lossy"], tmp_path)
    shard = sorted(folder.glob("*.safetensors"))[0]
    header, body = split_safetensors(shard.read_bytes())
    key = next(k for k in header if k.endswith(".llmcomp_transform"))
    stored = json.loads(body[slice(*header[key]["data_offsets"])])
    new = json.dumps(dict(stored, **{field: value}), separators=(",", ":"), sort_keys=True).encode()
    shard.write_bytes(join_safetensors(*replace_tensor(header, body, key, new)))
    with pytest.raises(FormatError, match=field):
        decompress_checkpoint(folder, tmp_path / "out")


def test_decompress_refuses_a_plain_tensor_that_fails_its_checksum(fuzz_checkpoints, tmp_path):
    # was: the damaged norm copied into the plain checkpoint (stream/expand.py decompress_into; seed 3, input 9340)
    from llmcomp_hf.errors import ChecksumMismatchError

    folder = _copy(fuzz_checkpoints["lossless"], tmp_path)
    shard = sorted(folder.glob("*.safetensors"))[1]
    header, body = split_safetensors(shard.read_bytes())
    key = next(k for k in header if k.endswith("layernorm.weight"))
    a, _ = header[key]["data_offsets"]
    body = body[:a] + bytes([body[a] ^ 0x40]) + body[a + 1:]
    shard.write_bytes(join_safetensors(header, body))
    with pytest.raises(ChecksumMismatchError, match=key):
        decompress_checkpoint(folder, tmp_path / "out")


def test_from_pretrained_names_a_shard_the_damaged_index_invents(fuzz_checkpoints, tmp_path):
    # was: FileNotFoundError from paths.check_regular via quantizer -> reader.shard_keys (seed 4, input 839)
    folder = _copy(fuzz_checkpoints["lossless"], tmp_path)
    index = folder / "model.safetensors.index.json"
    index.write_text(index.read_text().replace("model-00002-of-00003", "model-0000203", 1))
    with pytest.raises(FormatError, match="model-0000203.safetensors"):
        transformers.AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("file,damage", [
    ("generation_config.json", b'{"deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),  # seed 32, input 1349
    ("config.json", None),  # a field of the wrong type: transformers' strict dataclass check (seed 31, input 1245)
])
def test_verify_exits_0_only_if_transformers_reads_the_configs(fuzz_checkpoints, tmp_path, capsys, file, damage):
    # was: llmcomp verify said ok, then from_pretrained raised RecursionError / StrictDataclassFieldValidationError
    from tests.cli.helpers import run_cli

    folder = _copy(fuzz_checkpoints["lossy"], tmp_path)
    if damage is None:
        config = json.loads((folder / file).read_text())
        config["num_attention_heads"] = "llmcomp.tensor"
        damage = json.dumps(config).encode()
    (folder / file).write_bytes(damage)
    assert (folder / file).exists()
    with pytest.raises(Exception):  # noqa: B017 - the premise: transformers cannot load this folder
        transformers.AutoModelForCausalLM.from_pretrained(folder)
    rc, _, err = run_cli(capsys, "verify", str(folder), "-q")
    assert rc == 1 and file in err and "from_pretrained would fail" in err, err
