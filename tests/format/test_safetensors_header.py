"""format.safetensors_header: the one parser of the hand-read readers (prefetch mapping, stream pread)."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save

from llmcomp_hf.errors import FormatError
from llmcomp_hf.format.safetensors_header import read_header


def _file(header: dict | bytes, data: bytes = b"\0" * 16) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _parse(blob: bytes):
    return read_header(lambda n, at: blob[at : at + n], len(blob), "x.safetensors")


def test_reads_what_safetensors_writes():
    blob = save({"a": torch.arange(6, dtype=torch.int16).reshape(2, 3), "b": torch.ones(4)}, metadata={"k": "v"})
    header = _parse(blob)
    assert header.metadata == {"k": "v"}
    a = header.entries["a"]
    assert (a.dtype, a.shape) == ("I16", (2, 3))
    assert torch.equal(torch.frombuffer(bytearray(blob[a.start : a.end]), dtype=torch.int16), torch.arange(6, dtype=torch.int16))


GOOD = {"t": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]}}


@pytest.mark.parametrize("blob", [
    b"\x01",  # shorter than the length field
    struct.pack("<Q", 1 << 40) + b"{}",  # header runs past the end
    _file(b"[" * 100_000 + b"]" * 100_000),  # nested too deep
    _file(b"\xff\xfe{}"),  # not UTF-8
    _file(b"[]"),  # not an object
    _file({"t": {**GOOD["t"], "dtype": "Q9"}}),
    _file({"t": {**GOOD["t"], "shape": [-1]}}),
    _file({"t": {**GOOD["t"], "shape": "16"}}),
    _file({"t": {**GOOD["t"], "data_offsets": [0, 1 << 40]}}),  # outside the file
    _file({"t": {**GOOD["t"], "data_offsets": [8, 4]}}),
    _file({"t": {**GOOD["t"], "data_offsets": [0, 8]}}),  # 8 bytes for 16 elements
    _file({"t": {**GOOD["t"], "data_offsets": ["0", 16]}}),
    _file({"t": [1, 2]}),
    _file({**GOOD, "__metadata__": {"k": 1}}),
], ids=lambda b: str(len(b)))
def test_damaged_headers_are_format_errors_naming_the_file(blob):
    with pytest.raises(FormatError, match="x.safetensors"):
        _parse(blob)


def test_a_valid_handmade_header_parses():
    assert _parse(_file(GOOD)).entries["t"].end == 8 + len(json.dumps(GOOD)) + 16
