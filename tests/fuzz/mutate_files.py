"""Structure-aware mutation of checkpoint files: safetensors framing (header length, JSON header offsets,
dtypes, shapes, metadata), the llmcomp parts stored in a shard, lossy transform headers and their parts,
model.safetensors.index.json and config.json; plus plain byte-level mutation of any file."""

from __future__ import annotations

import json
import struct

import numpy as np

from .mutate_bytes import mutate_bytes, mutate_json_bytes
from .mutate_codec import mutate_header, mutate_index

PART_SUFFIXES = ("llmcomp_header", "llmcomp_index", "llmcomp_data", "llmcomp_transform")


def split_safetensors(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join_safetensors(header: dict | bytes, body: bytes) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _tensor_bytes(header: dict, body: bytes, key: str) -> bytes:
    a, b = header[key]["data_offsets"]
    return body[a:b]


def replace_tensor(header: dict, body: bytes, key: str, new: bytes) -> tuple[dict, bytes]:
    """``key``'s bytes replaced by ``new`` (its shape follows for 1-D tensors); later tensors move."""
    header = json.loads(json.dumps(header))
    a, b = header[key]["data_offsets"]
    shift = len(new) - (b - a)
    for k, v in header.items():
        if k != "__metadata__" and v["data_offsets"][0] >= b and k != key:
            v["data_offsets"] = [v["data_offsets"][0] + shift, v["data_offsets"][1] + shift]
    header[key]["data_offsets"] = [a, a + len(new)]
    if len(header[key]["shape"]) == 1:
        size = {"U8": 1, "I64": 8}.get(header[key]["dtype"], 1)
        header[key]["shape"] = [len(new) // size]
    return header, body[:a] + new + body[b:]


def _framing(header: dict, body: bytes, raw: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    r = rng.random()
    if r < 0.25:
        n = struct.unpack("<Q", raw[:8])[0]
        value = int(rng.choice([0, 1, 7, n - 8, n - 1, n + 1, n + 8, len(raw), 2**32, 2**63, 2**64 - 1]))
        return struct.pack("<Q", value % 2**64) + raw[8:], f"safetensors header length {value}"
    keys = [k for k in header if k != "__metadata__"]
    if r < 0.8 and keys:
        key = keys[int(rng.integers(len(keys)))]
        field = str(rng.choice(["dtype", "shape", "data_offsets"]))
        new, what = mutate_json_bytes(json.dumps(header).encode(), rng, paths=[(key, field)])
        return join_safetensors(new, body), f"safetensors {key}: {what}"
    new, what = mutate_json_bytes(json.dumps(header).encode(), rng, paths=[("__metadata__",)])
    return join_safetensors(new, body), f"safetensors metadata: {what}"


def _content(header: dict, body: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    keys = [k for k in header if k != "__metadata__"]
    parts = [k for k in keys if k.rsplit(".", 1)[-1] in PART_SUFFIXES]
    pool = parts if parts and rng.random() < 0.85 else keys
    key = pool[int(rng.integers(len(pool)))]
    old, suffix = _tensor_bytes(header, body, key), key.rsplit(".", 1)[-1]
    r = rng.random()
    if r < 0.1:  # a key renamed, dropped or moved name-wise
        header = json.loads(json.dumps(header))
        entry = header.pop(key)
        if rng.random() < 0.7:
            other = keys[int(rng.integers(len(keys)))]
            new_key = str(rng.choice([other.rsplit(".", 1)[0] + "." + suffix, key + "x", key.replace("0", "1", 1)]))
            header[new_key] = entry
        return join_safetensors(header, body), f"key {key} renamed/dropped"
    if suffix == "llmcomp_header":
        new, what = mutate_header(old, rng)
    elif suffix == "llmcomp_index":
        new, what = mutate_index(old, rng)
        new = new[: len(new) // 8 * 8]
    elif suffix == "llmcomp_transform":
        new, what = mutate_json_bytes(old, rng)
    else:
        new, what = mutate_bytes(old, rng)
        if header[key]["dtype"] != "U8" or len(header[key]["shape"]) != 1:
            new = (new + bytes(len(old)))[: len(old)]  # a plain tensor keeps its size
    header, body = replace_tensor(header, body, key, new)
    return join_safetensors(header, body), f"tensor {key}: {what}"


def mutate_file(name: str, raw: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """A mutated copy of one checkpoint file's bytes and a one-line description."""
    if rng.random() < 0.15:
        new, what = mutate_bytes(raw, rng)
        return new, f"bytes {what}"
    if name == "config.json":
        paths = [("quantization_config",)] if rng.random() < 0.8 else None
        return mutate_json_bytes(raw, rng, paths)
    if name.endswith(".json"):
        return mutate_json_bytes(raw, rng)
    header, body = split_safetensors(raw)
    if rng.random() < 0.3:
        return _framing(header, body, raw, rng)
    return _content(header, body, rng)
