"""API contract: threads, out=, verify=, argument checking, EncodedTensor.from_parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcomp_hf.codec import EncodedTensor, FormatError, decode, encode

from .helpers import DTYPE_NAMES, DTYPES, assert_same_bits, tensor_of

BS = 256
CODERS = ("huffman", "rans", "raw")


def same_encoding(a: EncodedTensor, b: EncodedTensor) -> bool:
    return a.header == b.header and np.array_equal(a.data, b.data) and np.array_equal(a.index, b.index)


@pytest.mark.parametrize("coder", CODERS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "int8", "float64"])
def test_threads_give_identical_results(dtype: str, coder: str) -> None:
    t = tensor_of(dtype, 37 * BS + 11, "specials", seed=21, shape=(37 * BS + 11,))
    encs = [encode(t, coder=coder, block_size=BS, threads=th) for th in (None, 1, 2)]
    assert same_encoding(encs[0], encs[1]) and same_encoding(encs[1], encs[2]), "encoding depends on threads"
    for th in (None, 1, 2):
        assert_same_bits(decode(encs[0], threads=th), t, f"threads={th}")


@pytest.mark.parametrize("coder", CODERS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "int8"])
def test_groups_split_into_parts_give_identical_bytes(dtype: str, coder: str) -> None:
    """A group encoded in parts (fewer groups than threads) replays the earlier blocks' table
    choices: same bytes for every split, including blocks that reuse the previous table."""
    from llmcomp_hf.codec.api import _Encoding, _encode_tmp

    halves = [tensor_of(dtype, 20 * BS, kind, seed=23 + i) for i, kind in enumerate(("skewed", "specials"))]
    t = torch.cat([halves[0], halves[1][: 13 * BS + 5], halves[0][: 3 * BS]])  # 37 blocks: 3 groups, mixed tables
    whole = encode(t, coder=coder, block_size=BS, threads=1)
    for parts in (2, 3, 7, 16):
        job = _Encoding(t, coder, BS, None, None)
        job.tmp = _encode_tmp(job.tmp_bytes)
        for g in reversed(range(job.n_groups)):  # any order: parts are independent
            for part in reversed(range(parts)):
                job.run_group(g, part, parts)
        assert same_encoding(job.finish(), whole), f"{parts} parts per group changed the bytes"
    for th in (3, 8):  # through the API: 3 groups on more threads than that
        assert same_encoding(encode(t, coder=coder, block_size=BS, threads=th), whole), f"threads={th}"


@pytest.mark.parametrize("coder", CODERS)
def test_out_preallocated(coder: str) -> None:
    t = tensor_of("bfloat16", 5 * BS + 3, "skewed", seed=22, shape=(1, 5 * BS + 3))
    enc = encode(t, coder=coder, block_size=BS)
    for th in (1, 2):
        out = torch.full_like(t, float("nan"))
        res = decode(enc, out=out, threads=th)
        assert res.data_ptr() == out.data_ptr(), "decode(out=...) must write into and return out"
        assert_same_bits(out, t, f"out= threads={th}")


@pytest.mark.parametrize("bad", [
    torch.empty(5 * BS + 3, dtype=torch.float16),          # wrong dtype
    torch.empty(5 * BS + 4, dtype=torch.bfloat16),         # wrong numel
    torch.empty(2 * (5 * BS + 3), dtype=torch.bfloat16)[::2],  # non-contiguous
])
def test_out_rejected(bad: torch.Tensor) -> None:
    enc = encode(tensor_of("bfloat16", 5 * BS + 3, "skewed", seed=23), block_size=BS)
    try:
        res = decode(enc, out=bad)
    except (ValueError, TypeError):
        return
    # accepting a non-contiguous out is fine only if the values land correctly
    assert not bad.is_contiguous() and res.data_ptr() == bad.data_ptr()
    assert_same_bits(res.contiguous(), decode(enc))


@pytest.mark.parametrize("coder", CODERS)
def test_verify_false_same_result(coder: str) -> None:
    t = tensor_of("float32", 3 * BS, "specials", seed=24)
    enc = encode(t, coder=coder, block_size=BS)
    assert_same_bits(decode(enc, verify=False), t)


def test_default_block_size_and_name() -> None:
    t = tensor_of("bfloat16", 70000, "skewed", seed=25)
    enc = encode(t, name="model.layers.0.w")
    assert enc.header["block_size"] == 65536 and enc.index.shape == (3,)
    assert enc.name == "model.layers.0.w"
    assert_same_bits(decode(enc), t)


@pytest.mark.parametrize("kwargs", [
    {"coder": "zstd"}, {"coder": "HUFFMAN"}, {"block_size": 128}, {"block_size": 300},
    {"block_size": 2**25}, {"block_size": 0}, {"block_size": -256},
])
def test_encode_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises((ValueError, TypeError)):
        encode(torch.zeros(10), **kwargs)


@pytest.mark.parametrize("t", [torch.zeros(4, dtype=torch.complex64), torch.zeros(4, dtype=torch.uint16),
                               torch.zeros(4, dtype=torch.float8_e4m3fnuz), np.zeros(4, np.complex64),
                               np.zeros(4, np.uint32), np.array(["a", "b"])])
def test_encode_rejects_unsupported_dtypes(t: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        encode(t)


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_from_parts_roundtrip(dtype: str) -> None:
    t = tensor_of(dtype, 2 * BS + 1, "skewed", seed=26)
    enc = encode(t, coder="rans", block_size=BS)
    for header in (enc.header, enc.header_json()):
        back = EncodedTensor.from_parts(header, torch.from_numpy(enc.data.copy()), torch.from_numpy(enc.index.copy()), name="x")
        assert_same_bits(decode(back), t)


@pytest.mark.parametrize("which,arr", [
    ("data", np.zeros(3, np.int8)), ("data", np.zeros(3, np.float32)), ("data", np.zeros(3, np.uint16)),
    ("index", np.zeros(2, np.int32)), ("index", np.zeros(2, np.uint64)), ("index", np.zeros(2, np.float64)),
    ("data", torch.zeros(3, dtype=torch.int8)), ("index", torch.zeros(2, dtype=torch.int32)),
])
def test_from_parts_rejects_wrong_array_dtypes(which: str, arr: object) -> None:
    enc = encode(tensor_of("int8", 10, "skewed", seed=27), block_size=BS)
    parts = {"data": enc.data, "index": enc.index, which: arr}
    with pytest.raises(FormatError):
        EncodedTensor.from_parts(enc.header, parts["data"], parts["index"])


def test_numel_matches_header() -> None:
    for dtype in DTYPE_NAMES:
        t = tensor_of(dtype, 300, "uniform", seed=28, shape=(3, 100))
        enc = encode(t, block_size=BS)
        assert enc.numel == 300 and enc.shape == (3, 100) and enc.itemsize == DTYPES[dtype].itemsize
        assert enc.original_nbytes == 300 * DTYPES[dtype].itemsize
