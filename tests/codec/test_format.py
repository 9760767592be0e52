"""The encoder's choices and the container, checked against docs/format.md part 1."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from llmcomp_hf.codec import FORMAT_VERSION, EncodedTensor, decode, encode

from . import spec
from .helpers import DTYPE_NAMES, DTYPES, assert_same_bits, make_bits, raw_bytes, tensor_of

BS = 256
CODERS = ("huffman", "rans", "raw")
CODED_MODE = {"huffman": spec.HUFFMAN, "rans": spec.RANS}


def sections(enc: EncodedTensor) -> list[spec.Section]:
    return [s for blk in spec.parse(enc.header, enc.data, enc.index) for s in blk]


@pytest.mark.parametrize("coder", CODERS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_header(dtype: str, coder: str) -> None:
    t = tensor_of(dtype, 600, "skewed", seed=11, shape=(20, 30))
    enc = encode(t, coder=coder, block_size=BS, name="layer.w")
    spec.check_header(enc.header)
    assert enc.header == {
        "format": "llmcomp.tensor", "version": FORMAT_VERSION, "dtype": dtype, "shape": [20, 30],
        "coder": coder, "block_size": BS, "checksum": enc.header["checksum"],
    }
    assert int(enc.header["checksum"], 16) == spec.checksum(enc.header, raw_bytes(t))
    assert enc.data.dtype == np.uint8 and enc.index.dtype == np.int64
    assert enc.data.ndim == 1 and enc.index.ndim == 1
    assert json.loads(enc.header_json()) == enc.header
    assert enc.nbytes == enc.data.nbytes + enc.index.nbytes + len(enc.header_json())
    assert enc.ratio == pytest.approx(enc.nbytes / (600 * DTYPES[dtype].itemsize))


def _fmix(h: int) -> int:
    """murmur3's 32-bit finaliser, worked with Python ints."""
    h ^= h >> 16
    h = h * 0x85EBCA6B % 2**32
    h ^= h >> 13
    h = h * 0xC2B2AE35 % 2**32
    return h ^ (h >> 16)


def test_checksum_reference_values() -> None:
    """sum32 worked by hand from the spec's formula, so the oracle itself is pinned."""
    assert _fmix(1) == 0x514E28B7  # published murmur3 fmix32 test value
    assert spec.sum32(np.zeros(0, np.uint8)) == 0
    assert spec.sum32(np.zeros(4, np.uint8)) == 0  # word 0, i = 0: fmix(0 ^ 0) = 0
    assert spec.sum32(np.array([1, 0, 0, 0], np.uint8)) == _fmix(1)
    w1 = _fmix(0x01 ^ 0x9E3779B9)
    assert spec.sum32(np.array([0, 0, 0, 0, 1], np.uint8)) == w1  # tail zero-padded
    assert spec.sum32(np.full(8, 0xFF, np.uint8)) == _fmix(0xFFFFFFFF) + _fmix(0xFFFFFFFF ^ 0x9E3779B9)


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_planes_roundtrip_in_oracle(dtype: str) -> None:
    w = make_bits(dtype, 999, "uniform", np.random.default_rng(12))
    planes = spec.split_planes(w, dtype)
    assert len(planes) == DTYPES[dtype].planes and all(p.dtype == np.uint8 for p in planes)
    assert np.array_equal(spec.merge_planes(planes, dtype), w)


def test_bf16_exponent_plane() -> None:
    """p0 of bf16 is the 8-bit exponent: 1.0 (0x3F80) has exponent 127, -2.0 (0xC000) 128."""
    p0, p1 = spec.split_planes(np.array([0x3F80, 0xC000, 0x7FC1, 0x8001], np.uint16), "bfloat16")
    assert p0.tolist() == [127, 128, 0xFF, 0] and p1.tolist() == [0, 0x80, 0x41, 0x81]


@pytest.mark.parametrize("coder", CODERS)
def test_modes_by_coder(coder: str) -> None:
    """huffman uses modes {raw, const, huffman}, rans {raw, const, rans}, raw {raw, const}."""
    allowed = {spec.RAW, spec.CONST} | ({CODED_MODE[coder]} if coder in CODED_MODE else set())
    for dtype in DTYPE_NAMES:
        for kind in ("skewed", "uniform", "const", "specials", "sparse"):
            enc = encode(tensor_of(dtype, 3 * BS + 9, kind, seed=13), coder=coder, block_size=BS)
            used = {s.mode for s in sections(enc)}
            assert used <= allowed, f"{dtype}/{kind} coder={coder}: modes {used}"


@pytest.mark.parametrize("coder", ("huffman", "rans"))
def test_skewed_uses_coded_mode(coder: str) -> None:
    enc = encode(tensor_of("bfloat16", 4 * BS, "skewed", seed=14), coder=coder, block_size=BS)
    for blk in spec.parse(enc.header, enc.data, enc.index):
        assert blk[0].mode == CODED_MODE[coder], "bf16 exponent plane of weight-like data must be entropy coded"
    assert enc.data.size < 0.8 * 4 * BS * 2


@pytest.mark.parametrize("coder", CODERS)
def test_const_mode(coder: str) -> None:
    t = torch.full((5 * BS + 1,), -0.375, dtype=torch.bfloat16)
    enc = encode(t, coder=coder, block_size=BS)
    if coder == "raw":  # the spec leaves const-vs-raw to the encoder when asked for raw
        assert {s.mode for s in sections(enc)} <= {spec.RAW, spec.CONST}
    else:
        for s in sections(enc):
            assert s.mode == spec.CONST and s.end - s.start == 2
        assert enc.data.size == 6 * 2 * 2
    assert_same_bits(decode(enc), t)


@pytest.mark.parametrize("coder", CODERS)
def test_uniform_falls_back_to_raw(coder: str) -> None:
    t = tensor_of("uint8", 4 * BS, "uniform", seed=15)
    enc = encode(t, coder=coder, block_size=BS)
    assert all(s.mode == spec.RAW for s in sections(enc))
    assert enc.data.size == 4 * (BS + 1)


@pytest.mark.parametrize("coder", CODERS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_never_larger_than_raw(dtype: str, coder: str) -> None:
    """Each section costs at most its raw fallback (n + 1 bytes)."""
    for kind in ("skewed", "uniform", "specials", "sparse"):
        for n in (1, 2, 3, 5, 64, BS + 1):
            enc = encode(tensor_of(dtype, n, kind, seed=16), coder=coder, block_size=BS)
            for s in sections(enc):
                assert s.end - s.start <= s.n + 1, f"{dtype}/{kind} n={n}: {spec.MODE_NAMES[s.mode]} section of {s.end - s.start} bytes"


def test_empty_tensor_layout() -> None:
    for coder in CODERS:
        enc = encode(torch.zeros(0, dtype=torch.float32), coder=coder, block_size=BS)
        assert enc.data.size == 0 and enc.index.tolist() == [0]
        assert int(enc.header["checksum"], 16) == spec.checksum(enc.header, np.zeros(0, np.uint8)) == spec.header_term(enc.header)
        assert enc.ratio == 1.0


def test_block_slicing_matches_index() -> None:
    """Block b decodes to elements [b*bs, (b+1)*bs): check via the oracle's per-block planes."""
    t = tensor_of("float32", 3 * BS + 17, "specials", seed=17)
    enc = encode(t, coder="huffman", block_size=BS)
    w = t.view(torch.int32).numpy().view(np.uint32)
    for b, blk in enumerate(spec.parse(enc.header, enc.data, enc.index)):
        got = spec.merge_planes([s.symbols for s in blk], "float32")
        assert np.array_equal(got, w[b * BS:(b + 1) * BS])
    assert math.prod(enc.shape) == enc.numel == 3 * BS + 17


def test_checksum_catches_two_word_changes() -> None:
    """Two words changed in the same bit: int32 [0, 0] vs [1, 1] must not share a checksum.

    Regression test: the first sum32 was linear in (w_i XOR c_i), so +1 on word 0 and -1 on word 1
    cancelled, and ~3e-4 of single-byte corruptions of Huffman streams decoded "successfully".
    """
    a = encode(torch.tensor([0, 0], dtype=torch.int32))
    b = encode(torch.tensor([1, 1], dtype=torch.int32))
    assert a.header["checksum"] != b.header["checksum"]
