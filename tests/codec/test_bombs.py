"""Decompression bombs (issue 8): a few bytes of const blocks may declare gigabytes. Decoders refuse
before allocating: a documented output limit with an override, a declared-shape check the loader
runs before decoding, and low-rank factors checked against the weight's shape before any matmul."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcomp_hf.codec import EncodedTensor, FormatError, decode, decode_many, encode
from llmcomp_hf.codec import api, memory
from llmcomp_hf.format import check_declared, pack
from llmcomp_hf.format.lossy import compress_lossy, decode_lossy
from llmcomp_hf.format.reader import decode_parts
from llmcomp_hf.transforms import LowRank

from .helpers import assert_same_bits

BIG = 1 << 24


def bomb(numel: int, name: str = "bomb.weight", dtype: str = "int8") -> EncodedTensor:
    """Const-zero blocks of 2**24 elements: 2 bytes a plane a block, however many elements."""
    n_blocks = -(-numel // BIG)
    planes = {"int8": 1, "bfloat16": 2, "float32": 4}[dtype]
    data = np.tile(np.array([1, 0] * planes, np.uint8), n_blocks)
    index = np.arange(n_blocks + 1, dtype=np.int64) * 2 * planes
    header = {"format": "llmcomp.tensor", "version": 1, "dtype": dtype, "shape": [numel], "coder": "raw",
              "block_size": BIG, "checksum": "0" * 16}
    return EncodedTensor.from_parts(header, data, index, name=name)


@pytest.fixture
def no_big_allocations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail instead of allocating more than 1 GiB for a decode output (safe on a broken decoder)."""
    real = memory.empty

    def guarded(shape, dtype):
        nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
        if nbytes > 1 << 30:
            pytest.fail(f"decoder allocated {nbytes} bytes for a bomb before refusing it")
        return real(shape, dtype)

    monkeypatch.setattr(memory, "empty", guarded)  # the module api allocates through


def test_default_limit_is_documented_and_refuses_before_allocating(no_big_allocations: None) -> None:
    assert api.MAX_OUTPUT_BYTES == 16 << 30
    enc = bomb(api.MAX_OUTPUT_BYTES + 1)  # ~2 KB of blocks
    assert enc.data.nbytes < 4096
    with pytest.raises(FormatError, match=r"bomb\.weight.*max_output_bytes"):
        decode(enc)
    with pytest.raises(FormatError, match="max_output_bytes"):
        decode_many([encode(torch.zeros(10)), enc])


def test_explicit_limit_and_override(no_big_allocations: None) -> None:
    enc = bomb(64 << 20)
    with pytest.raises(FormatError, match=r"67108864 bytes.*bomb\.weight"):
        decode(enc, max_output_bytes=1 << 20)
    with pytest.raises(FormatError, match="max_output_bytes"):
        decode_many([enc, enc], max_output_bytes=(64 << 20) + 1)  # the limit is on the call's total
    assert decode(enc, verify=False, max_output_bytes=64 << 20).abs().sum() == 0  # (the bomb's checksum is made up)
    assert all(int(t.abs().sum()) == 0 for t in decode_many([enc, enc], verify=False, max_output_bytes=None))


def test_out_given_needs_no_limit() -> None:
    enc = encode(torch.arange(4096, dtype=torch.float32))
    out = torch.empty(4096)
    assert_same_bits(decode(enc, out=out, max_output_bytes=16), torch.arange(4096, dtype=torch.float32))


def test_decode_parts_bounds_the_output(no_big_allocations: None) -> None:
    parts = {k.rsplit("_", 1)[1]: v for k, v in pack("bomb.weight", bomb(64 << 20)).items()}
    with pytest.raises(FormatError, match=r"bomb\.weight.*shard\.safetensors"):
        decode_parts("bomb.weight", parts, "shard.safetensors", max_output_bytes=1 << 20)


# --- the loader's check of a stored weight against the parameter, before decoding --------------

def test_check_declared_accepts_the_matching_parameter() -> None:
    enc = encode(torch.zeros(8, 32, dtype=torch.bfloat16))
    parts = pack("m.weight", enc)
    for header in (enc.header, parts["m.weight.llmcomp_header"]):
        check_declared("m.weight", header, (8, 32), torch.bfloat16, "s.safetensors")
        check_declared("m.weight", header, torch.Size([8, 32]), None)  # dtype unchecked (the load casts)


@pytest.mark.parametrize("shape,dtype,match", [((8, 33), torch.bfloat16, "shape"), ((32, 8), torch.bfloat16, "shape"),
                                               ((256,), torch.bfloat16, "shape"), ((8, 32), torch.float16, "dtype")])
def test_check_declared_refuses_another_shape_or_dtype(shape, dtype, match) -> None:
    enc = encode(torch.zeros(8, 32, dtype=torch.bfloat16))
    with pytest.raises(FormatError, match=rf"{match}.*m\.weight.*s\.safetensors"):
        check_declared("m.weight", pack("m.weight", enc)["m.weight.llmcomp_header"], shape, dtype, "s.safetensors")


def test_check_declared_reads_lossy_transform_headers() -> None:
    lw, _ = compress_lossy("m.weight", torch.randn(16, 24), LowRank(rank=2))
    header = lw.pack()["m.weight.llmcomp_transform"]
    check_declared("m.weight", header, (16, 24), torch.float32)
    with pytest.raises(FormatError, match="shape"):
        check_declared("m.weight", header, (16, 25), torch.float32)


def test_check_declared_refuses_a_bomb_before_decoding() -> None:
    with pytest.raises(FormatError, match=r"bomb\.weight"):
        check_declared("bomb.weight", bomb(8 << 30).header, (4096, 4096), torch.int8)


@pytest.mark.parametrize("header", [b"\xff\xfe", b"[1]", b'{"format": "x"}', b"{" * 100000])
def test_check_declared_refuses_garbage_headers(header: bytes) -> None:
    tensor = torch.frombuffer(bytearray(header), dtype=torch.uint8)
    with pytest.raises(FormatError, match=r"m\.weight"):
        check_declared("m.weight", tensor, (2, 2), torch.float32)


# --- lossy: factors must multiply to the declared shape --------------------------------------------

def _lossy_parts(lw) -> dict:
    out: dict = {}
    for key, tensor in lw.pack().items():
        if key.endswith("llmcomp_transform"):
            continue
        base, part = key.rsplit(".", 1)
        out.setdefault(base[len(lw.name) + 1:], {})[part.removeprefix("llmcomp_")] = tensor
    return out


def test_lowrank_factors_are_checked_before_the_matmul(monkeypatch: pytest.MonkeyPatch) -> None:
    """Factors [m', 1] x [1, n'] with m' * n' far beyond the declared [16, 24]: refused, no matmul."""
    lw, _ = compress_lossy("m.weight", torch.randn(16, 24), LowRank(rank=1, factor_dtype="float32"))
    parts = _lossy_parts(lw)
    big = {"left": torch.zeros(60000, 1), "right": torch.zeros(1, 40000)}
    for key, t in big.items():
        enc = encode(t, name=f"m.weight.{key}")
        parts[key] = {k.rsplit("_", 1)[1]: v for k, v in pack(f"m.weight.{key}", enc).items()}

    def no_matmul(*args, **kwargs):
        pytest.fail("reconstruct ran with factors that do not fit the declared shape")

    monkeypatch.setattr("llmcomp_hf.transforms.reconstruct", no_matmul)
    transform = lw.pack()["m.weight.llmcomp_transform"]
    with pytest.raises(FormatError, match=r"m\.weight.*f\.safetensors"):
        decode_lossy("m.weight", transform, parts, "f.safetensors")


def test_lossy_parts_may_not_declare_more_than_the_weight_needs(no_big_allocations: None) -> None:
    lw, _ = compress_lossy("m.weight", torch.randn(16, 24), LowRank(rank=1, factor_dtype="float32"))
    parts = _lossy_parts(lw)
    parts["left"] = {k.rsplit("_", 1)[1]: v for k, v in pack("m.weight.left", bomb(2 << 30, "m.weight.left", "float32")).items()}
    with pytest.raises(FormatError, match=r"m\.weight"):
        decode_lossy("m.weight", lw.pack()["m.weight.llmcomp_transform"], parts, "f.safetensors")
