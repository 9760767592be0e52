"""``SafetensorsFile``: the package's one reader of safetensors files, at least as strict as ``safe_open``.

Every reader (prefetch mapping, ``format.reader``, the CLI's listing and its pooled reads) goes through
it, so a crafted layout gets one verdict everywhere; and a file it accepts is one transformers'
``safe_open`` reads too, which is what lets ``llmcomp verify`` promise that ``from_pretrained`` loads.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llmcomp_hf import _prefetch
from llmcomp_hf.errors import FormatError
from llmcomp_hf.format.reader import load_checkpoint, shard_keys
from llmcomp_hf.format.safetensors_file import SafetensorsFile
from llmcomp_hf.stream.reader import BufferPool, ShardReader
from llmcomp_hf.stream.source import read_checkpoint, read_shard
from tests.cli.helpers import run_cli
from tests.integration.helpers import raw_bits


def _file(header: dict, data: bytes, pad: bytes = b"") -> bytes:
    text = json.dumps(header).encode() + pad
    return struct.pack("<Q", len(text)) + text + data


def _u8(start: int, end: int) -> dict:
    return {"dtype": "U8", "shape": [end - start], "data_offsets": [start, end]}


LAYOUTS = {  # name: file bytes that safe_open refuses
    "gap": _file({"a": _u8(0, 2), "b": _u8(4, 6)}, b"x" * 6),
    "overlap": _file({"a": _u8(0, 4), "b": _u8(2, 4)}, b"x" * 4),
    "same bytes twice": _file({"a": _u8(0, 2), "b": _u8(0, 2)}, b"x" * 2),
    "bytes after the last tensor": _file({"a": _u8(0, 2)}, b"x" * 6),
    "first tensor not at the start": _file({"a": _u8(2, 4)}, b"x" * 4),
    "header past the end": struct.pack("<Q", 1 << 20) + b"{}",
    "metadata not strings": _file({"__metadata__": {"k": 1}, "a": _u8(0, 2)}, b"xx"),
    "dtype a list (fuzz campaign: TypeError)": _file({"a": {"dtype": ["U8"], "shape": [2], "data_offsets": [0, 2]}}, b"xx"),
    "dtype an object": _file({"a": {"dtype": {"U8": 1}, "shape": [2], "data_offsets": [0, 2]}}, b"xx"),
    "shape and bytes disagree": _file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"x" * 8),
}


def _safe_open_refuses(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as handle:
            [handle.get_tensor(k) for k in handle.keys()]
    except Exception:  # noqa: BLE001 - any refusal counts
        return True
    return False


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_reader_refuses_a_layout_safe_open_refuses(tmp_path, layout):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    path = folder / "model.safetensors"
    path.write_bytes(LAYOUTS[layout])
    assert _safe_open_refuses(path)  # the premise: transformers could not read this file

    for mapped in (False, True):
        with pytest.raises(FormatError, match="model.safetensors"):
            SafetensorsFile(path, mapped=mapped)
    with pytest.raises(FormatError, match="model.safetensors"):
        _prefetch._MappedShard(str(path))  # accepted trailing bytes, gaps and overlaps before
    with pytest.raises(FormatError):
        shard_keys(path)
    with pytest.raises(FormatError):
        load_checkpoint(folder)
    with pytest.raises(FormatError):
        read_checkpoint(folder)


def test_verify_refuses_bytes_appended_to_a_shard(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file({"w": torch.arange(6, dtype=torch.float32)}, str(folder / "model.safetensors"))
    with open(folder / "model.safetensors", "ab") as f:
        f.write(b"\0" * 16)
    rc, out, err = run_cli(capsys, "verify", folder)
    assert rc == 1 and "model.safetensors" in err, (rc, out, err)


def _sample_tensors(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {
        "bf16": torch.randn(7, 5, generator=gen).to(torch.bfloat16),
        "f16": torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 6e-8], dtype=torch.float16),
        "f32": torch.randn(3, 4, 2, generator=gen),
        "i64": torch.randint(-(2**62), 2**62, (5,), generator=gen, dtype=torch.int64),
        "u8": torch.randint(0, 256, (9,), generator=gen, dtype=torch.uint8),
        "bool": torch.rand(4, generator=gen) > 0.5,
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(1.5, dtype=torch.float64),
        "u16": torch.randint(0, 2**16, (3,), generator=gen, dtype=torch.int32).to(torch.uint16),
    }
    out["f16"][4:5].view(torch.int16).fill_(0x7E01)  # a NaN with a payload
    return out


@pytest.mark.parametrize("seed", range(3))
def test_reads_what_safe_open_reads_bit_for_bit(tmp_path, seed):
    tensors = _sample_tensors(seed)
    path = tmp_path / "a.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "k": "v"})
    with safe_open(str(path), framework="pt") as ref:
        want = {k: ref.get_tensor(k) for k in ref.keys()}
        want_meta = ref.metadata()
    for mapped in (False, True):
        with SafetensorsFile(path, mapped=mapped) as f:
            assert sorted(f.keys()) == sorted(want) and f.metadata() == want_meta
            for key, ref_tensor in want.items():
                got = f.get_tensor(key)
                assert got.dtype == ref_tensor.dtype and got.shape == ref_tensor.shape, key
                assert torch.equal(raw_bits(got), raw_bits(ref_tensor)), key
                assert bytes(f.array(key)) == ref_tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def test_keys_in_file_order_and_pooled_reads(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"z": torch.ones(300_000), "a": torch.zeros(3)}, str(path))
    info = read_shard(path, tmp_path)
    with SafetensorsFile(path) as f:
        assert [t.name for t in info.tensors] == f.keys()
        order = [f.entry(k).start for k in f.keys()]
        assert order == sorted(order)
    pool = BufferPool()
    with ShardReader(info) as reader:
        tensor, buf = reader.read("z", pool)
        assert torch.equal(tensor, torch.ones(300_000))
        pool.give(buf)


def test_a_shard_changed_after_listing_is_refused(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"w": torch.ones(4)}, str(path))
    info = read_shard(path, tmp_path)
    save_file({"w": torch.ones(5)}, str(path))
    with pytest.raises(FormatError, match="changed since it was listed"):
        ShardReader(info)


def test_a_key_not_in_the_shard_names_key_and_file(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"w": torch.ones(4)}, str(path))
    with SafetensorsFile(path) as f, pytest.raises(FormatError, match=r"'missing'.*a\.safetensors"):
        f.get_tensor("missing")


def test_the_mapping_outlives_the_descriptor(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"w": torch.arange(10, dtype=torch.uint8)}, str(path))
    with SafetensorsFile(path, mapped=True) as f:
        raw = f.raw
        entry = f.entry("w")
    assert np.array_equal(raw[entry.start : entry.end], np.arange(10, dtype=np.uint8))
