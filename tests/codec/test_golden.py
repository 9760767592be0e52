"""Committed golden fixtures (tests/data/golden): decoded on every run, and re-encoded to check the
encoder still writes exactly the committed bytes (a format drift detector).

If an intended format change breaks this, bump the format version, rerun
tests/data/golden/make_golden.py and commit the new fixtures with the change.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from llmcomp_hf.codec import EncodedTensor, decode, encode

from . import spec
from .helpers import DTYPES, assert_same_bits

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
MANIFEST = json.loads((GOLDEN / "golden.json").read_text())


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "golden.npz") as z:
        return {k: z[k] for k in z.files}


def expected_tensor(header: dict, raw: np.ndarray) -> torch.Tensor:
    dtype = DTYPES[header["dtype"]].torch
    if raw.size == 0:
        return torch.empty(header["shape"], dtype=dtype)
    return torch.from_numpy(raw.copy()).view(dtype).reshape(header["shape"])


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_golden_decodes(name: str, arrays: dict[str, np.ndarray]) -> None:
    header = MANIFEST[name]["header"]
    data, index, raw = arrays[f"{name}.data"], arrays[f"{name}.index"], arrays[f"{name}.raw"]
    want = expected_tensor(header, raw)
    enc = EncodedTensor.from_parts(header, data, index, name=name)
    assert_same_bits(decode(enc), want, name)
    assert_same_bits(decode(enc, threads=1, verify=False), want, name)
    assert np.array_equal(spec.decode(header, data, index).view(np.uint8), raw), f"{name}: spec oracle"


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_golden_encoding_has_not_drifted(name: str, arrays: dict[str, np.ndarray]) -> None:
    header = MANIFEST[name]["header"]
    want = expected_tensor(header, arrays[f"{name}.raw"])
    enc = encode(want, **MANIFEST[name]["encode"])
    assert enc.header == header, f"{name}: header drifted"
    assert np.array_equal(enc.index, arrays[f"{name}.index"]), f"{name}: block index drifted"
    assert np.array_equal(enc.data, arrays[f"{name}.data"]), f"{name}: encoded bytes drifted"


def test_golden_reference_encoder_matches(arrays: dict[str, np.ndarray]) -> None:
    reference = pytest.importorskip("llmcomp_hf.codec.reference")
    for name, meta in MANIFEST.items():
        want = expected_tensor(meta["header"], arrays[f"{name}.raw"])
        enc = reference.encode_reference(want, **meta["encode"])
        assert np.array_equal(enc.data, arrays[f"{name}.data"]), f"{name}: reference encoder differs"
        assert_same_bits(reference.decode_reference(enc), want, name)


def test_golden_covers_the_format(arrays: dict[str, np.ndarray]) -> None:
    """The fixtures exercise every mode and several dtypes, so drift anywhere is caught."""
    modes, dtypes = set(), set()
    for name, meta in MANIFEST.items():
        h = meta["header"]
        dtypes.add(h["dtype"])
        for m in spec.modes(h, arrays[f"{name}.data"], arrays[f"{name}.index"]):
            modes.update(m)
        assert arrays[f"{name}.raw"].size == math.prod(h["shape"]) * DTYPES[h["dtype"]].itemsize
    assert modes == {spec.RAW, spec.CONST, spec.HUFFMAN, spec.RANS, spec.RANS_CTX}
    assert {"bfloat16", "float16", "float32", "int8"} <= dtypes
