"""Shared by the part 2 and part 3 golden tests: the committed fixtures, and safetensors files read raw."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

DATA = Path(__file__).resolve().parent / "data"


def read_raw(file: Path) -> tuple[dict[str, Any], bytes]:
    """A safetensors file as (its parsed JSON header, its data section).

    safetensors writes ``__metadata__`` in hash-map order, so two writes of the same shard can differ in
    header bytes only; comparing the parsed header and the data section compares everything else exactly
    (tensor order, offsets, alignment, every stored byte).
    """
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def read_shard(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a shard as stored (no decoding), and its ``__metadata__``."""
    with safe_open(file, framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {}


def bits(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor, for bit-exact comparison (NaN payloads and -0.0 included)."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert sorted(got) == sorted(want), f"{what}: keys differ"
    for key, t in want.items():
        g = got[key]
        assert (g.dtype, list(g.shape)) == (t.dtype, list(t.shape)), f"{what}: {key} is {g.dtype} {list(g.shape)}"
        assert bits(g) == bits(t), f"{what}: {key} differs"


def json_tensor(t: torch.Tensor) -> dict[str, Any]:
    """A stored JSON header tensor, parsed; it must be compact UTF-8 JSON with sorted keys (docs/format.md)."""
    text = bits(t).decode("utf-8")
    obj = json.loads(text)
    assert text == json.dumps(obj, separators=(",", ":"), sort_keys=True), "header JSON is not compact and sorted"
    return obj
