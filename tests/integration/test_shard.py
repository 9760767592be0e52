"""Shard naming and packing (docs/format.md part 2), on real MiniLM weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llmcomp_hf.codec import encode
from llmcomp_hf.errors import FormatError
from llmcomp_hf.format import SHARD_METADATA, decode_tensors, pack, part_key, split_key, unpack
from llmcomp_hf.format.shard import check_metadata
from tests.integration.helpers import raw_bits

NAME = "encoder.layer.0.attention.self.query.weight"


@pytest.fixture(scope="module")
def weight(minilm_dir):
    return load_file(str(minilm_dir / "model.safetensors"))[NAME].to(torch.bfloat16)


def test_names():
    assert part_key("a.weight", "data") == "a.weight.llmcomp_data"
    assert split_key("a.weight.llmcomp_index") == ("a.weight", "index")
    assert split_key("a.weight") == ("a.weight", None)
    assert split_key("llmcomp_data") == ("llmcomp_data", None)


def test_pack_unpack_round_trip(weight):
    enc = encode(weight, name=NAME)
    tensors = pack(NAME, enc)
    assert {k: v.dtype for k, v in tensors.items()} == {
        f"{NAME}.llmcomp_data": torch.uint8, f"{NAME}.llmcomp_index": torch.int64, f"{NAME}.llmcomp_header": torch.uint8}
    header = json.loads(bytes(tensors[f"{NAME}.llmcomp_header"].numpy()))
    assert header == enc.header and header["shape"] == [384, 384]
    out = decode_tensors(tensors | {"plain.bias": torch.ones(3)})
    assert torch.equal(raw_bits(out[NAME]), raw_bits(weight)) and torch.equal(out["plain.bias"], torch.ones(3))


def test_missing_part_names_tensor_and_file(weight):
    parts = {split_key(k)[1]: v for k, v in pack(NAME, encode(weight)).items()}
    del parts["header"]
    with pytest.raises(FormatError, match=rf"missing.*{NAME}.llmcomp_header.*shard-7.safetensors"):
        unpack(NAME, parts, "shard-7.safetensors")


@pytest.mark.parametrize("header", [b"{not json", b"[1, 2]", json.dumps({"format": "other"}).encode()])
def test_bad_header_is_a_format_error(weight, header):
    parts = {split_key(k)[1]: v for k, v in pack(NAME, encode(weight)).items()}
    parts["header"] = torch.frombuffer(bytearray(header), dtype=torch.uint8)
    with pytest.raises(FormatError, match=NAME):
        unpack(NAME, parts, "f.safetensors")


def test_shard_metadata_version_is_checked():
    check_metadata(SHARD_METADATA | {"format": "pt"}, "x.safetensors")
    check_metadata({"format": "pt"}, "x.safetensors")  # a re-sharded file without our keys is fine
    with pytest.raises(FormatError, match=r"version '2'.*x\.safetensors.*pip install -U llmcomp-hf"):
        check_metadata(SHARD_METADATA | {"llmcomp.version": "2"}, "x.safetensors")
