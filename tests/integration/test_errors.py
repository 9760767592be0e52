"""Damaged or foreign checkpoints fail with errors that name the tensor, the file and the fix."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmcomp_hf.config import LosslessConfig
from llmcomp_hf.errors import CorruptStreamError, FormatError
from tests.integration.helpers import rewrite_shard, tiny_model

TARGET = "model.layers.1.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A sharded llmcomp checkpoint of a tiny bf16 Llama, and the shard holding TARGET's data."""
    root = tmp_path_factory.mktemp("errors")
    tiny_model("llama", torch.bfloat16).save_pretrained(root / "dense")
    model = AutoModelForCausalLM.from_pretrained(root / "dense", quantization_config=LosslessConfig(min_numel=256))
    model.save_pretrained(root / "llmcomp", max_shard_size="40KB")
    weight_map = json.loads((root / "llmcomp" / "model.safetensors.index.json").read_text())["weight_map"]
    return root / "llmcomp", weight_map[f"{TARGET}.llmcomp_data"]


@pytest.fixture
def broken(good, tmp_path):
    folder, shard = good
    shutil.copytree(folder, tmp_path / "ckpt")
    return tmp_path / "ckpt", shard


def load(folder):
    return AutoModelForCausalLM.from_pretrained(folder)


def test_flipped_bits_in_data(broken):
    folder, shard = broken

    def flip(tensors, metadata):
        data = tensors[f"{TARGET}.llmcomp_data"]
        data[data.numel() // 2 :: 97] ^= 0x5A

    rewrite_shard(folder / shard, flip)
    with pytest.raises(CorruptStreamError, match=rf"{TARGET}.*{shard}.*re-download"):
        load(folder)


def test_truncated_data_tensor(broken):
    folder, shard = broken

    def cut(tensors, metadata):
        key = f"{TARGET}.llmcomp_data"
        tensors[key] = tensors[key][:-10].clone()

    rewrite_shard(folder / shard, cut)
    with pytest.raises(CorruptStreamError, match=rf"{TARGET}.*{shard}"):
        load(folder)


def test_missing_part(broken):
    folder, shard = broken
    rewrite_shard(folder / shard, lambda tensors, metadata: tensors.pop(f"{TARGET}.llmcomp_index"))
    with pytest.raises(FormatError, match=rf"missing.*{TARGET}.llmcomp_index"):
        load(folder)


def test_truncated_shard_file(broken):
    folder, shard = broken
    path = folder / shard
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(FormatError, match=rf"{shard}.*truncated"):
        load(folder)


def test_newer_shard_version(broken):
    folder, shard = broken
    rewrite_shard(folder / shard, lambda tensors, metadata: metadata.update({"llmcomp.version": "2"}))
    with pytest.raises(FormatError, match=rf"version '2'.*{shard}.*pip install -U llmcomp-hf"):
        load(folder)


def test_newer_tensor_header_version(broken):
    folder, _ = broken
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    shard = weight_map[f"{TARGET}.llmcomp_header"]

    def bump(tensors, metadata):
        key = f"{TARGET}.llmcomp_header"
        header = json.loads(bytes(tensors[key].numpy())) | {"version": 5}
        tensors[key] = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)

    rewrite_shard(folder / shard, bump)
    with pytest.raises(FormatError, match=rf"version 5.*{TARGET}.*Upgrade llmcomp-hf"):
        load(folder)


def test_newer_config_format_version(broken):
    folder, _ = broken
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = 2
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="format version 2.*pip install -U llmcomp-hf"):
        load(folder)
