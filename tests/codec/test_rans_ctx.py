"""Mode 4 specifics (docs/format.md): references to an earlier block's own tables, the implied
table frequency, 3-byte final states and their canonical form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcomp_hf.codec import CorruptStreamError, EncodedTensor, decode, encode
from llmcomp_hf.codec.reference import decode_reference, encode_reference

from . import spec
from .helpers import assert_same_bits

BS = 1024


def _alternating(dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A group of 6 blocks of N(0, 0.02) then 10 of twice that spread: the first blocks store the
    group's tables, later ones their own, and the last ones point to those (bf16, fp32)."""
    g = np.random.default_rng(seed)
    x = np.concatenate([g.normal(0.0, 0.02, BS) * (2 if b >= 6 else 1) for b in range(16)])
    return torch.from_numpy(x.astype(np.float32)).to(dtype)


def _ctx_sections(enc: EncodedTensor) -> list[tuple[int, int]]:
    """(block, payload start) of every mode-4 section."""
    return [(b, int(enc.index[b]) + 5) for b in range(enc.index.size - 1) if enc.data[enc.index[b]] == 4]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_refs_to_own_tables_match_reference(dtype: torch.dtype) -> None:
    t = _alternating(dtype, 0)
    enc = encode(t, coder="rans-ctx", block_size=BS)
    ref = encode_reference(t, coder="rans-ctx", block_size=BS)
    assert np.array_equal(enc.data, ref.data) and np.array_equal(enc.index, ref.index)
    assert_same_bits(decode(enc), t)
    assert_same_bits(decode_reference(enc), t)
    spec.decode(enc.header, enc.data, enc.index)
    secs = _ctx_sections(enc)
    holders = [b for b, p in secs if enc.data[p] & 15 == 0]
    targets = {b - (int(enc.data[p]) & 15) for b, p in secs if enc.data[p] & 15}
    assert any(enc.data[p] >> 4 for _, p in secs), "no 3-byte final state"
    if dtype != torch.float16:
        assert targets - {holders[0]}, "no block points to another block's own tables"


def _widen_first_short_state(enc: EncodedTensor) -> EncodedTensor:
    """Store the first 3-byte state of a referencing mode-4 section in 4 bytes (not canonical)."""
    for b, p in _ctx_sections(enc):
        flags = int(enc.data[p]) >> 4
        if enc.data[p] & 15 and flags:
            j = (flags & -flags).bit_length() - 1
            at = p + 1 + sum(3 if flags >> i & 1 else 4 for i in range(j))
            data = enc.data.copy()
            data[p] &= ~np.uint8(1 << (4 + j))
            size = int.from_bytes(data[p - 4 : p].tobytes(), "little") + 1
            data[p - 4 : p] = np.frombuffer(size.to_bytes(4, "little"), np.uint8)
            data = np.insert(data, at + 3, 0)
            index = enc.index.copy()
            index[b + 1 :] += 1
            return EncodedTensor(dict(enc.header), data, index, "widened")
    raise AssertionError("no referencing section with a 3-byte state")


def test_four_byte_state_below_2_24_is_corrupt() -> None:
    enc = encode(_alternating(torch.bfloat16, 0), coder="rans-ctx", block_size=BS)
    bad = _widen_first_short_state(enc)
    with pytest.raises(CorruptStreamError):
        decode(bad, verify=False)
    with pytest.raises(CorruptStreamError):
        decode_reference(bad, verify=False)
    with pytest.raises(spec.SpecViolation):
        spec.parse(bad.header, bad.data, bad.index)


def test_implied_frequency_out_of_range_is_corrupt() -> None:
    """A table whose stored frequencies of a context sum to 0 (implied 4096) is rejected."""
    # k = 0, skip = 0, lo = 0x70, m = 2, r0 = 0: the one stored code is '1' (value 0); implied 4096.
    tables = bytes([0, 0x70, 1, 0, 0b1])
    payload = bytes([0]) + tables + (1 << 16).to_bytes(4, "little") * 4
    plane1 = bytes([0]) + bytes(4)  # raw plane 1 of 4 elements
    block = bytes([4]) + len(payload).to_bytes(4, "little") + payload + plane1
    header = {"format": "llmcomp.tensor", "version": 2, "dtype": "bfloat16", "shape": [4], "coder": "rans-ctx",
              "block_size": BS, "checksum": "0" * 16}
    bad = EncodedTensor(header, np.frombuffer(block, np.uint8).copy(), np.array([0, len(block)], np.int64), "implied")
    with pytest.raises(CorruptStreamError):
        decode(bad, verify=False)
    with pytest.raises(CorruptStreamError):
        decode_reference(bad, verify=False)
    with pytest.raises(spec.SpecViolation):
        spec.parse(bad.header, bad.data, bad.index)
