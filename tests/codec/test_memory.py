"""Decode outputs and the opt-in huge-page advice."""

from __future__ import annotations

import os

import pytest
import torch

from llmcomp_hf.codec import decode, encode, memory


def test_empty_is_an_ordinary_tensor_with_or_without_the_advice(monkeypatch):
    for wanted in ("0", "1"):
        monkeypatch.setenv("LLMCOMP_HUGE_PAGES", wanted)
        out = memory.empty((1024, 4096), torch.bfloat16)
        assert out.shape == (1024, 4096) and out.dtype == torch.bfloat16 and out.is_contiguous()
        out.fill_(1.5)
        assert float(out.float().sum()) == 1.5 * out.numel()


@pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/transparent_hugepage"), reason="kernel without THP")
def test_advice_is_taken_for_large_tensors_only():
    assert memory.advise_huge_pages(torch.empty(16 << 20, dtype=torch.uint8))
    assert not memory.advise_huge_pages(torch.empty(1 << 20, dtype=torch.uint8))  # under ADVISE_MIN_BYTES


def test_decoding_into_advised_memory_is_bit_exact(monkeypatch):
    monkeypatch.setenv("LLMCOMP_HUGE_PAGES", "1")
    x = torch.randn(3 << 20, dtype=torch.float32)
    x[::1000] = float("nan")
    got = decode(encode(x))
    assert torch.equal(got.view(torch.int32), x.view(torch.int32))
