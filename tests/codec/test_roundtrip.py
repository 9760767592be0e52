"""Round trips over every dtype, bit pattern, size and distribution; always compared bit for bit.

Each encoded stream is also decoded by the independent spec oracle (spec.py), so an encoder
and decoder that agree with each other but not with docs/format.md still fail here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from llmcomp_hf.codec import decode, encode

from . import spec
from .helpers import DTYPE_NAMES, DTYPES, KINDS, SPECIALS, assert_same_bits, bits, from_bits, tensor_of

BS = 256  # smallest legal block: keeps multi-block inputs tiny
CODERS = ("huffman", "rans", "raw", "rans-ctx")
BOUNDARY_SIZES = [BS * m + d for m in (1, 2, 3, 4) for d in (-1, 0, 1)]

sizes = st.one_of(st.integers(0, 3), st.sampled_from(BOUNDARY_SIZES), st.integers(0, 5 * BS + 7))


def check_roundtrip(t: torch.Tensor, coder: str, block_size: int = BS) -> None:
    """encode -> decode is bit-exact, and the stream follows the spec (oracle decode, checksum)."""
    enc = encode(t, coder=coder, block_size=block_size)
    what = f"{t.dtype} {tuple(t.shape)} coder={coder}"
    assert_same_bits(decode(enc), t, what)
    assert np.array_equal(spec.decode(enc.header, enc.data, enc.index), bits(t)), f"spec oracle disagrees: {what}"


@given(dtype=st.sampled_from(DTYPE_NAMES), n=sizes, kind=st.sampled_from(KINDS),
       coder=st.sampled_from(CODERS), seed=st.integers(0, 2**32 - 1))
@example(dtype="bfloat16", n=BS + 1, kind="skewed", coder="huffman", seed=0)
@example(dtype="bfloat16", n=BS + 1, kind="skewed", coder="rans", seed=0)
def test_roundtrip_distributions(dtype: str, n: int, kind: str, coder: str, seed: int) -> None:
    check_roundtrip(tensor_of(dtype, n, kind, seed), coder)


@given(dtype=st.sampled_from([d for d in DTYPE_NAMES if d != "bool"]), raw=st.binary(max_size=3 * BS * 8),
       coder=st.sampled_from(CODERS))
def test_roundtrip_arbitrary_bytes(dtype: str, raw: bytes, coder: str) -> None:
    """Any bit pattern at all (shrinkable input): NaN payloads, subnormals, whatever comes."""
    size = DTYPES[dtype].itemsize
    arr = np.frombuffer(raw[: len(raw) // size * size], dtype=DTYPES[dtype].uint)
    check_roundtrip(from_bits(arr, dtype), coder)


@pytest.mark.parametrize("coder", CODERS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_specials_every_pattern(dtype: str, coder: str) -> None:
    """Each special pattern alone, repeated (const), and scattered in weight-like data."""
    pats = np.array(SPECIALS[dtype], DTYPES[dtype].uint)
    check_roundtrip(from_bits(pats, dtype), coder)
    for p in pats:
        check_roundtrip(from_bits(np.full(BS + 3, p), dtype), coder)
    check_roundtrip(tensor_of(dtype, 3 * BS + 5, "specials", seed=1), coder)


@pytest.mark.parametrize("coder", CODERS)
def test_bf16_nan_payloads_kept(coder: str) -> None:
    pats = np.array([0x7FC1, 0xFF81, 0x7F81, 0xFFC0, 0x7FFF, 0x8000, 0x0000, 0x0001, 0x7F80, 0xFF80] * 40, np.uint16)
    t = from_bits(pats, "bfloat16")
    out = decode(encode(t, coder=coder, block_size=BS))
    assert out.view(torch.int16).numpy().view(np.uint16).tolist() == pats.tolist()


@pytest.mark.parametrize("shape", [(), (0,), (1,), (0, 3), (3, 0, 2), (7, 13, 5), (1, 1, 1, 257), (2, BS)])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "int64", "bool"])
def test_shapes(shape: tuple[int, ...], dtype: str) -> None:
    t = tensor_of(dtype, math.prod(shape), "skewed", seed=3, shape=shape)
    for coder in CODERS:
        enc = encode(t, coder=coder, block_size=BS)
        assert enc.header["shape"] == list(shape)
        assert enc.index.shape == (-(-math.prod(shape) // BS) + 1,)
        check_roundtrip(t, coder)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "int32"])
def test_non_contiguous_input(dtype: str) -> None:
    t = tensor_of(dtype, 40 * 30, "skewed", seed=4, shape=(40, 30))
    view = t.t()[:, ::3]  # transposed and strided
    assert not view.is_contiguous()
    for coder in CODERS:
        out = decode(encode(view, coder=coder, block_size=BS))
        assert_same_bits(out, view.contiguous(), f"non-contiguous {dtype} {coder}")


@pytest.mark.parametrize("np_dtype", [np.float16, np.float32, np.float64, np.int8, np.uint8, np.int16,
                                      np.int32, np.int64, np.bool_])
def test_numpy_input(np_dtype: type) -> None:
    rng = np.random.default_rng(5)
    arr = (rng.normal(0, 3, (17, 31)) > 0) if np_dtype is np.bool_ else rng.normal(0, 3, (17, 31)).astype(np_dtype)
    want = torch.from_numpy(arr.copy())
    for coder in CODERS:
        enc = encode(arr, coder=coder, block_size=BS)
        assert enc.header["dtype"] == str(want.dtype).removeprefix("torch.")
        assert_same_bits(decode(enc), want, f"numpy {np.dtype(np_dtype)} {coder}")


@pytest.mark.parametrize("block_size", [256, 320, 1024, 65536])
def test_block_sizes(block_size: int) -> None:
    t = tensor_of("bfloat16", 3000, "skewed", seed=6)
    for coder in CODERS:
        enc = encode(t, coder=coder, block_size=block_size)
        assert enc.header["block_size"] == block_size
        assert enc.index.shape == (-(-3000 // block_size) + 1,)
        assert_same_bits(decode(enc), t, f"block_size={block_size} {coder}")


def test_large_block_many_symbols_rans_and_huffman() -> None:
    """A 64K block of near-uniform-but-not-quite data: 256 symbols, long codes, many rANS words."""
    rng = np.random.default_rng(7)
    vals = np.minimum(rng.geometric(0.02, 65536 + 100), 255).astype(np.uint8)
    t = torch.from_numpy(vals)
    for coder in ("huffman", "rans"):
        assert_same_bits(decode(encode(t, coder=coder)), t, coder)
