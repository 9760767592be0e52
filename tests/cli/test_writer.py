"""The streaming safetensors writer: files that safetensors and transformers read like any other."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from llmcomp_hf.errors import LlmcompError
from llmcomp_hf.stream.writer import StreamingShardWriter
from tests.cli.helpers import raw_bits


def _header(path) -> tuple[int, dict]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8 : 8 + n])


def test_fixed_and_deferred_tensors_round_trip(tmp_path):
    tensors = {
        "a.bf16": torch.randn(3, 5).to(torch.bfloat16),
        "b.f32": torch.randn(7),
        "c.i64": torch.arange(9),
        "d.bool": torch.tensor([True, False, True]),
        "e.empty": torch.empty(0, 4),
        "f.scalar": torch.tensor(2.5, dtype=torch.float16),
        "g.f8": torch.randn(4).to(torch.float8_e4m3fn),
    }
    codes = {torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64", torch.bool: "BOOL",
             torch.float16: "F16", torch.float8_e4m3fn: "F8_E4M3"}
    blobs = {"x.data": np.arange(13, dtype=np.uint8), "y.data": np.frombuffer(b'{"k":1}', np.uint8)}
    path = tmp_path / "s.safetensors"
    w = StreamingShardWriter(str(path), {"format": "pt", "k": "v"})
    w.add_deferred("x.data")
    for name, t in tensors.items():
        w.add_fixed(name, codes[t.dtype], list(t.shape))
    w.add_deferred("y.data")
    w.start()
    w.append("y.data", blobs["y.data"])  # any order
    for name, t in reversed(tensors.items()):
        w.write_fixed(name, t.contiguous().reshape(-1).view(torch.uint8).numpy())
    w.append("x.data", blobs["x.data"])
    assert w.finish() == sum(t.numel() * t.element_size() for t in tensors.values()) + 13 + 7

    loaded = load_file(str(path))
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape
        assert torch.equal(raw_bits(loaded[name]), raw_bits(t))
    for name, b in blobs.items():
        assert loaded[name].numpy().tobytes() == b.tobytes()
    with safe_open(str(path), framework="pt") as h:
        assert h.metadata() == {"format": "pt", "k": "v"}
    n, head = _header(path)
    assert (8 + n) % 8 == 0  # data starts aligned
    for name, entry in head.items():
        if name != "__metadata__":
            itemsize = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8, "BOOL": 1, "U8": 1, "F8_E4M3": 1}[entry["dtype"]]
            assert entry["data_offsets"][0] % itemsize == 0, name


def test_bytes_must_match_the_declaration(tmp_path):
    w = StreamingShardWriter(str(tmp_path / "s.safetensors"))
    w.add_fixed("a", "F32", [4])
    w.start()
    with pytest.raises(LlmcompError, match="declared 16"):
        w.write_fixed("a", np.zeros(3, np.float32))
    w.abort()
    assert not (tmp_path / "s.safetensors").exists()


def test_missing_tensor_fails_and_removes_the_file(tmp_path):
    w = StreamingShardWriter(str(tmp_path / "s.safetensors"))
    w.add_fixed("a", "F32", [4])
    w.add_deferred("b")
    w.start()
    w.write_fixed("a", np.zeros(4, np.float32))
    with pytest.raises(LlmcompError, match="missing tensors"):
        w.finish()
    assert not (tmp_path / "s.safetensors").exists()


def test_duplicate_and_unknown_names_are_rejected(tmp_path):
    w = StreamingShardWriter(str(tmp_path / "s.safetensors"))
    w.add_fixed("a", "F32", [1])
    with pytest.raises(LlmcompError, match="twice"):
        w.add_deferred("a")
    with pytest.raises(LlmcompError, match="dtype"):
        w.add_fixed("b", "F4", [2])
    w.start()
    with pytest.raises(LlmcompError, match="not declared"):
        w.append("zzz", np.zeros(1, np.uint8))
    w.abort()
