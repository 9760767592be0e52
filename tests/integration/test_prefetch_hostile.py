"""The prefetcher validates stored weights with the loader's own function (``format.shard.unpack``):
it never hands out a weight whose parts the loader would refuse."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from llmcomp_hf import _prefetch
from llmcomp_hf.codec import EncodedTensor, encode
from llmcomp_hf.errors import FormatError
from llmcomp_hf.format.reader import check_keys
from llmcomp_hf.format.shard import MAX_HEADER_BYTES, pack, part_key, unpack

NAME = "layer.weight"


def _encoded_with_checksum_starting_0() -> EncodedTensor:
    for seed in range(400):  # the shape varies too: format v3 checksums add a term bound to dtype and shape
        torch.manual_seed(seed)
        enc = encode(torch.randn(16 + seed, 64).to(torch.bfloat16), block_size=1024, name=NAME)
        if enc.header["checksum"].startswith("0"):
            return enc
    raise AssertionError("no checksum starting with 0 in 400 seeds")


def _large(header: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(header + b" " * (MAX_HEADER_BYTES + 8 - len(header))), dtype=torch.uint8)


def _as_int64(header: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(header + b" " * (-len(header) % 8)), dtype=torch.int64)


def _plus_checksum(header: bytes) -> torch.Tensor:
    text = header.decode()
    checksum = text.split('"checksum":"')[1][:16]
    return torch.frombuffer(bytearray(text.replace(checksum, "+" + checksum[1:]).encode()), dtype=torch.uint8)


@pytest.mark.parametrize("damage", [_large, _as_int64, _plus_checksum])
def test_prefetch_refuses_what_the_loader_refuses(tmp_path, damage):
    enc = _encoded_with_checksum_starting_0()
    tensors = {k: v.clone() for k, v in pack(NAME, enc).items()}
    key = part_key(NAME, "header")
    tensors[key] = damage(bytes(tensors[key].numpy()))
    file = str(tmp_path / "model.safetensors")
    save_file(tensors, file)
    parts = {p: tensors[part_key(NAME, p)] for p in ("data", "index", "header")}
    with pytest.raises(FormatError, match=NAME):  # the loader's verdict
        unpack(NAME, parts, file)
    pre = _prefetch.Prefetcher([(NAME, file)], part_files={k: file for k in tensors}).start()
    end = time.monotonic() + 30
    while pre._thread.is_alive() and time.monotonic() < end and (pre._state == 0).any():
        time.sleep(0.01)
    assert pre.take(tensors[key]) is None  # left to the loader, which names the problem
    pre.close()


def test_a_checksum_with_a_sign_is_not_hex_digits():
    enc = _encoded_with_checksum_starting_0()
    header = dict(enc.header, checksum="+" + enc.header["checksum"][1:])
    assert int(header["checksum"], 16) == int(enc.header["checksum"], 16)  # same value: only the form is wrong
    with pytest.raises(FormatError, match="16 hex digits"):
        EncodedTensor.from_parts(header, enc.data, enc.index, name=NAME)
    for bad in (" " + enc.header["checksum"][1:], "0x" + enc.header["checksum"][2:], "1_2" + enc.header["checksum"][3:]):
        with pytest.raises(FormatError, match="16 hex digits"):
            EncodedTensor.from_parts(dict(enc.header, checksum=bad), enc.data, enc.index, name=NAME)


def test_prefetch_discovery_refuses_a_key_in_two_shards(tmp_path):
    enc = _encoded_with_checksum_starting_0()
    files = []
    for i in range(2):
        file = str(tmp_path / f"model-0000{i + 1}-of-00002.safetensors")
        save_file({k: v.clone() for k, v in pack(NAME, enc).items()}, file)
        files.append(file)
    with pytest.raises(FormatError, match="two shards"):
        _prefetch.discover(files)
    with pytest.raises(FormatError, match="plain and compressed"):
        check_keys([("a", [NAME]), ("b", [part_key(NAME, "data")])])
    assert np.asarray(enc.index).dtype == np.int64
