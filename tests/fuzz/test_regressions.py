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


def test_verify_refuses_a_damaged_missing_plugin_guard(fuzz_checkpoints, tmp_path, capsys):
    # was: verify ok, then from_pretrained raised transformers' "Unknown fusion type" (seed 40, input 55)
    from llmcomp_hf._guard import GUARD_KEY
    from tests.cli.helpers import run_cli

    folder = _copy(fuzz_checkpoints["lossless"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["fusion_config"] = {GUARD_KEY.replace("install", "insvall"): False}
    (folder / "config.json").write_text(json.dumps(config))
    rc, _, err = run_cli(capsys, "verify", str(folder), "-q")
    assert rc == 1 and "Unknown fusion type" in err and "config.json" in err, err


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_shard_header_with_a_nan_literal_is_refused_as_safe_open_does(fuzz_checkpoints, tmp_path, constant):
    # was: our parser took {"__proto__": [NaN]} in an entry, safe_open (transformers) refused it (seed 40, input 6886)
    from llmcomp_hf.format.reader import load_checkpoint

    folder = _copy(fuzz_checkpoints["lossless"], tmp_path)
    shard = sorted(folder.glob("*.safetensors"))[-1]
    raw = shard.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    text = raw[8 : 8 + n].decode()
    new = text.replace('"data_offsets"', f'"x":[{constant}],"data_offsets"', 1).encode()
    new += b" " * (-len(new) % 8)
    shard.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n :])
    with pytest.raises(FormatError, match="not JSON|not valid"):
        load_checkpoint(folder)


@pytest.mark.parametrize("metadata", [False, [], "x", None])
def test_an_index_whose_metadata_is_not_an_object_is_refused(fuzz_checkpoints, tmp_path, capsys, metadata):
    # was: verify ok, then transformers' get_checkpoint_shard_files raised TypeError/KeyError (seed 40, input 7199)
    from tests.cli.helpers import run_cli

    folder = _copy(fuzz_checkpoints["lossy"], tmp_path)
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    if metadata is None:
        del data["metadata"]
    else:
        data["metadata"] = metadata
    index.write_text(json.dumps(data))
    rc, _, err = run_cli(capsys, "verify", str(folder), "-q")
    assert rc == 1 and "'metadata' must be a JSON object" in err, err
    with pytest.raises(FormatError, match="metadata"):
        transformers.AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("stages", [-256, "ecq4", {"transform": "nf4"}])
def test_inspect_refuses_stages_that_are_not_a_list(fuzz_checkpoints, tmp_path, capsys, stages):
    # was: TypeError: 'int' object is not iterable in card.stage_names (seed 40, input 3486)
    from tests.cli.helpers import run_cli

    folder = _copy(fuzz_checkpoints["lossy"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["stages"] = stages
    (folder / "config.json").write_text(json.dumps(config))
    rc, _, err = run_cli(capsys, "inspect", str(folder))
    assert rc == 1 and "'stages' must be a list" in err, err


@pytest.mark.parametrize("qc", ["llmcomp", 7, ["x"]])
def test_inspect_and_verify_take_a_quantization_config_that_is_not_an_object(fuzz_checkpoints, tmp_path, capsys, qc):
    # was: AttributeError: 'str' object has no attribute 'get' in llmcomp inspect (seed 40, input 9550)
    from tests.cli.helpers import run_cli

    folder = _copy(fuzz_checkpoints["lossless"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = qc
    (folder / "config.json").write_text(json.dumps(config))
    rc, out, err = run_cli(capsys, "inspect", str(folder))
    assert rc == 0 and "Traceback" not in err, err  # inspect reports what the shards hold
    rc, _, err = run_cli(capsys, "verify", str(folder), "-q")
    assert rc == 1 and "config.json" in err, err


@pytest.mark.parametrize("coder", ["huffman", "rans-ctx", "rans-scale"])
def test_a_block_index_whose_differences_overflow_is_refused(coder):
    # was: SIGSEGV — index entries 2**63-ish apart wrapped the int64 block size to a positive number, so the
    # index passed as increasing and a context-mode check read data[idx[b]] far outside (seed 50, input 82300)
    import torch

    from llmcomp_hf.codec import EncodedTensor, decode, encode
    from llmcomp_hf.codec.api import decode_many

    torch.manual_seed(0)
    enc = encode(torch.randn(16, 96), block_size=256, coder=coder, name="w")
    index = enc.index.copy()
    index[2], index[3] = 8718968878589282018, -2161727821137838077  # idx[3] - idx[2] overflows to > 0
    with pytest.raises(FormatError, match="does not rise from 0"):
        EncodedTensor.from_parts(enc.header, enc.data, index, "w")
    crafted = EncodedTensor.__new__(EncodedTensor)
    crafted.__dict__.update(enc.__dict__)
    crafted.index = index
    for run in (lambda: decode(crafted), lambda: decode_many([crafted])):
        with pytest.raises(FormatError):
            run()


@pytest.mark.parametrize("kind", ["lossless", "lossy"])
def test_verify_refuses_a_config_describing_other_shapes(fuzz_checkpoints, tmp_path, capsys, kind):
    # was: verify ok, then from_pretrained refused "stored weight declares shape [64, 128] where the model
    # expects [64, 64]" — config.json's intermediate_size edited (seed 50, inputs 5560, 9194, 9748)
    from tests.cli.helpers import run_cli

    folder = _copy(fuzz_checkpoints[kind], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = config["intermediate_size"] * 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError, match="declares shape"):
        transformers.AutoModelForCausalLM.from_pretrained(folder)
    rc, _, err = run_cli(capsys, "verify", str(folder), "-q")
    assert rc == 1 and "mlp" in err and "config.json describes" in err, err
    rc, _, err = run_cli(capsys, "verify", str(fuzz_checkpoints[kind]), "-q")
    assert rc == 0, err  # the intact folder still verifies
