"""Reading shards with pread into pooled buffers: exact bytes, bounded pool, truncation named."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from llmcomp_hf.errors import FormatError
from llmcomp_hf.stream.reader import SMALL, BufferPool, ShardReader
from llmcomp_hf.stream.source import read_shard
from tests.cli.helpers import raw_bits


def test_reads_every_dtype_exactly(tmp_path):
    tensors = {"a": torch.randn(300, 70).to(torch.bfloat16), "b": torch.arange(5), "c": torch.randn(3),
               "d": torch.empty(0, 3), "e": torch.tensor([True, False])}
    save_file(tensors, str(tmp_path / "s.safetensors"))
    pool = BufferPool(keep=2)
    with ShardReader(read_shard(tmp_path / "s.safetensors", tmp_path)) as reader:
        for name, t in tensors.items():
            got, buf = reader.read(name, pool)
            assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(raw_bits(got), raw_bits(t))
            pool.give(buf)


def test_pool_reuses_and_owns_at_most_keep_buffers():
    pool = BufferPool(keep=2)
    a, b, c = pool.take(SMALL * 2), pool.take(SMALL * 3), pool.take(SMALL)
    for buf in (a, b, c):
        pool.give(buf)
    # `a` came back while three were owned: dropped; b and c are kept
    assert [x.nbytes for x in pool._free] == [SMALL * 3, SMALL]
    assert pool.take(SMALL * 2) is b and pool.take(SMALL // 2 + SMALL // 2) is c  # best fit
    assert pool.take(10).nbytes < SMALL  # small buffers are never pooled


def test_truncated_shard_is_named(tmp_path):
    path = tmp_path / "s.safetensors"
    save_file({"w": torch.ones(1000)}, str(path))
    info = read_shard(path, tmp_path)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(FormatError, match="s.safetensors"):
        ShardReader(info)
