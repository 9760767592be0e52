"""The checksum binds dtype, shape and byte length (format version 3, issue 8): a header edited to
another dtype or shape no longer decodes "verified". Versions 1 and 2 still decode."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from llmcomp_hf.codec import FORMAT_VERSION, ChecksumMismatchError, EncodedTensor, decode, encode
from llmcomp_hf.codec.encoded import checksum_of, expected_sum, header_key
from llmcomp_hf.format import check_declared, pack

from . import spec
from .helpers import assert_same_bits, raw_bytes, tensor_of

BS = 256


def _edited(enc: EncodedTensor, **fields) -> EncodedTensor:
    return EncodedTensor.from_parts(dict(enc.header, **fields), enc.data, enc.index, name=enc.name)


def test_new_writes_are_version_3_and_match_the_spec() -> None:
    t = tensor_of("bfloat16", 600, "skewed", 3, shape=(20, 30))
    enc = encode(t, block_size=BS)
    assert FORMAT_VERSION == 3 and enc.header["version"] == 3
    assert int(enc.header["checksum"], 16) == spec.checksum(enc.header, raw_bytes(t))
    assert int(enc.header["checksum"], 16) != spec.sum32(raw_bytes(t))  # the header term is there
    assert expected_sum(enc.header) == spec.sum32(raw_bytes(t))
    assert checksum_of(enc.header, spec.sum32(raw_bytes(t))) == enc.header["checksum"]


@pytest.mark.parametrize("coder", ["huffman", "rans", "raw"])
def test_swapped_half_dtype_no_longer_verifies(coder: str) -> None:
    """bf16 and fp16 share the plane layout: the same bytes decode under either dtype."""
    for src, dst in (("bfloat16", "float16"), ("float16", "bfloat16")):
        enc = encode(tensor_of(src, 2 * BS + 7, "skewed", 5), coder=coder, block_size=BS, name="w")
        bad = _edited(enc, dtype=dst)
        with pytest.raises(ChecksumMismatchError, match="'w'"):
            decode(bad)
        got = decode(bad, verify=False)  # the bytes themselves are fine
        assert np.array_equal(got.view(torch.int16).numpy(), decode(enc).view(torch.int16).numpy())


def test_reshaped_header_no_longer_verifies() -> None:
    enc = encode(tensor_of("float32", 600, "skewed", 6, shape=(20, 30)), block_size=BS, name="w")
    for shape in ([30, 20], [600], [1, 20, 30]):
        with pytest.raises(ChecksumMismatchError):
            decode(_edited(enc, shape=shape))


def test_one_more_trailing_element_no_longer_verifies() -> None:
    """A constant-zero last block: one more element decodes, and the zero-padded last word used to hide it."""
    t = torch.cat([tensor_of("int8", 2 * BS, "skewed", 7), torch.zeros(3, dtype=torch.int8)])
    enc = encode(t, coder="rans", block_size=BS, name="w")
    assert spec.modes(enc.header, enc.data, enc.index)[-1] == [spec.CONST]
    longer = _edited(enc, shape=[2 * BS + 4])
    assert_same_bits(decode(longer, verify=False)[:-1], t)  # decodes, one zero more
    with pytest.raises(ChecksumMismatchError):
        decode(longer)
    old = _edited(enc, version=1, checksum=f"{spec.sum32(raw_bytes(t)):016x}")  # what version 1 could not see
    assert_same_bits(decode(_edited(old, shape=[2 * BS + 4])), torch.cat([t, torch.zeros(1, dtype=torch.int8)]))


def test_header_key_depends_on_dtype_shape_and_length_only() -> None:
    h = {"version": 3, "dtype": "bfloat16", "shape": [4, 6], "coder": "huffman", "block_size": 256}
    keys = {header_key(dict(h, **change)) for change in
            ({}, {"dtype": "float16"}, {"shape": [6, 4]}, {"shape": [24]}, {"shape": [4, 6, 1]}, {"shape": [4, 7]})}
    assert len(keys) == 6
    assert header_key(dict(h, coder="rans", block_size=512)) == header_key(h)  # how it was coded: not bound
    assert header_key(dict(h, version=1)) == header_key(dict(h, version=2)) == 0


def test_weights_swapped_wholesale_are_caught_by_the_declared_shape() -> None:
    """Every part of two weights exchanged: each decodes (and verifies) as the other. The checksum
    cannot tell when shape and dtype are equal too; the loader's check_declared catches the rest."""
    a = encode(torch.zeros(8, 16, dtype=torch.bfloat16), name="a.weight")
    b = encode(torch.ones(16, 8, dtype=torch.bfloat16), name="b.weight")
    header_b = pack("a.weight", replace(b, name="a.weight"))["a.weight.llmcomp_header"]
    with pytest.raises(Exception, match="shape"):
        check_declared("a.weight", header_b, (8, 16), torch.bfloat16)
    check_declared("a.weight", pack("a.weight", a)["a.weight.llmcomp_header"], (8, 16), torch.bfloat16)


@pytest.mark.parametrize("version", [1, 2])
def test_older_versions_still_decode(version: int) -> None:
    t = tensor_of("float16", 3 * BS, "skewed", 8)
    enc = encode(t, coder="rans-ctx" if version == 2 else "rans", block_size=BS)
    old = _edited(enc, version=version, checksum=f"{spec.sum32(raw_bytes(t)):016x}")
    assert_same_bits(decode(old), t)
    assert np.array_equal(spec.decode(old.header, old.data, old.index).view(np.uint8), raw_bytes(t))


def test_mode4_needs_coder_rans_ctx_in_version_3() -> None:
    t = tensor_of("bfloat16", 3 * BS, "skewed", 9)
    enc = encode(t, coder="rans-ctx", block_size=BS)
    assert any(spec.RANS_CTX in m for m in spec.modes(enc.header, enc.data, enc.index))
    with pytest.raises(Exception, match="mode-4"):
        EncodedTensor.from_parts(dict(enc.header, coder="rans"), enc.data, enc.index)
    with pytest.raises(spec.SpecViolation):
        spec.parse(dict(enc.header, coder="rans"), enc.data, enc.index)
