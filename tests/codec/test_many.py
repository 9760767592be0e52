"""encode_many/decode_many give the same bytes and tensors as one call per tensor."""

from __future__ import annotations

import numpy as np
import torch

from llmcomp_hf.codec import decode, decode_many, encode, encode_many


def test_many_matches_single_calls() -> None:
    torch.manual_seed(0)
    tensors = [torch.randn(n).to(torch.bfloat16) for n in (5, 300, 4096, 70_000)] + [torch.randn(40, 50)]
    singles = [encode(t, block_size=1024) for t in tensors]
    for threads in (1, 2):
        many = encode_many(tensors, threads=threads, block_size=1024)
        for a, b in zip(singles, many):
            assert a.header == b.header and np.array_equal(a.data, b.data) and np.array_equal(a.index, b.index)
        for t, out in zip(tensors, decode_many(many, threads=threads)):
            assert torch.equal(out.view(torch.uint8), t.reshape(out.shape).view(torch.uint8))
    assert torch.equal(decode(singles[-1]), tensors[-1])
