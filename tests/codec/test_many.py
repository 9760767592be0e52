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


def test_decode_many_shares_block_ranges_and_reports_the_bad_tensor() -> None:
    import pytest

    from llmcomp_hf.codec import api
    from llmcomp_hf.errors import ChecksumMismatchError, CorruptStreamError

    torch.manual_seed(1)
    dtypes = (torch.bfloat16, torch.float16, torch.float32, torch.int8, torch.float64)
    tensors = [(torch.randn(n) * 100).to(dt) for n, dt in zip((0, 1, 3000, 40_000, 9_999), dtypes)]
    encs = [encode(t, block_size=1024, coder=c, name=f"t{i}") for i, (t, c) in
            enumerate(zip(tensors, ("huffman", "rans", "huffman", "rans", "huffman")))]
    assert sum(-(-e.numel // 1024) for e in encs) > 4 * api.MANY_CHUNK_BLOCKS  # several ranges per tensor
    for threads in (1, 2, 3):
        for t, out in zip(tensors, decode_many(encs, threads=threads)):
            assert torch.equal(out.view(torch.uint8), t.view(torch.uint8))
    bad = encs[3]
    data = bad.data.copy()
    data[bad.index[20] + 30] ^= 0x55  # inside block 20 of t3
    broken = type(bad)(bad.header, data, bad.index, name="t3")
    with pytest.raises((CorruptStreamError, ChecksumMismatchError), match="t3"):
        decode_many([*encs[:3], broken, encs[4]], threads=2)


def test_decode_many_packs_small_tensors_and_still_names_the_bad_one() -> None:
    """Runs of sub-block tensors (biases, norms) share one task; a corrupt one among them is still
    the one named, and big tensors between them break the runs."""
    import pytest

    from llmcomp_hf.codec import api
    from llmcomp_hf.errors import ChecksumMismatchError, CorruptStreamError

    torch.manual_seed(2)
    sizes = [384] * 5 + [5000] + [7, 0, 1, 1000]  # four small, one of 5 blocks, then small again
    tensors = [torch.randn(n).to(torch.bfloat16) for n in sizes]
    encs = [encode(t, block_size=1024, name=f"s{i}") for i, t in enumerate(tensors)]
    jobs = [api._Decoding(e, None) for e in encs]
    tasks = api._decode_tasks(jobs)
    assert len(tasks) < len(encs)  # small neighbours share tasks
    for threads in (1, 2):
        for t, out in zip(tensors, decode_many(encs, threads=threads)):
            assert torch.equal(out.view(torch.uint8), t.view(torch.uint8))
    bad = encs[2]
    data = bad.data.copy()
    data[len(data) // 2] ^= 0x21
    broken = type(bad)(bad.header, data, bad.index, name="s2")
    with pytest.raises((CorruptStreamError, ChecksumMismatchError), match="s2"):
        decode_many([*encs[:2], broken, *encs[3:]], threads=2)
