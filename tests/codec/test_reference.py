"""The pure-numpy reference codec against the numba one: cross-decoding and identical bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmcomp_hf.codec import decode, encode

from .helpers import DTYPE_NAMES, KINDS, assert_same_bits, tensor_of

reference = pytest.importorskip("llmcomp_hf.codec.reference")

BS = 256
CODERS = ("huffman", "rans", "raw", "rans-ctx")
sizes = st.one_of(st.integers(0, 3), st.sampled_from([BS - 1, BS, BS + 1, 2 * BS, 2 * BS + 1]), st.integers(0, 3 * BS))
cases = dict(dtype=st.sampled_from(DTYPE_NAMES), n=sizes, kind=st.sampled_from(KINDS),
             coder=st.sampled_from(CODERS), seed=st.integers(0, 2**32 - 1))


@given(**cases)
def test_reference_encode_fast_decode(dtype: str, n: int, kind: str, coder: str, seed: int) -> None:
    t = tensor_of(dtype, n, kind, seed)
    assert_same_bits(decode(reference.encode_reference(t, coder=coder, block_size=BS)), t, "ref enc -> numba dec")


@given(**cases)
def test_fast_encode_reference_decode(dtype: str, n: int, kind: str, coder: str, seed: int) -> None:
    t = tensor_of(dtype, n, kind, seed)
    assert_same_bits(reference.decode_reference(encode(t, coder=coder, block_size=BS)), t, "numba enc -> ref dec")


@given(**cases)
def test_reference_and_fast_bytes_identical(dtype: str, n: int, kind: str, coder: str, seed: int) -> None:
    t = tensor_of(dtype, n, kind, seed)
    fast = encode(t, coder=coder, block_size=BS)
    ref = reference.encode_reference(t, coder=coder, block_size=BS)
    assert ref.header == fast.header
    assert np.array_equal(ref.index, fast.index), f"index differs: ref {ref.index.tolist()} fast {fast.index.tolist()}"
    assert np.array_equal(ref.data, fast.data), f"data differs at byte {int(np.flatnonzero(ref.data != fast.data)[0])}"


@pytest.mark.parametrize("coder", CODERS)
def test_reference_on_minilm_slice(minilm: dict, coder: str) -> None:
    """Real statistics: the first 2 blocks of a real weight, in bf16, through both paths."""
    import torch

    w = minilm["encoder.layer.0.attention.self.query.weight"].reshape(-1)[: 2 * BS + 17].to(torch.bfloat16)
    fast = encode(w, coder=coder, block_size=BS)
    ref = reference.encode_reference(w, coder=coder, block_size=BS)
    assert np.array_equal(ref.data, fast.data) and np.array_equal(ref.index, fast.index)
    assert_same_bits(reference.decode_reference(fast), w)
