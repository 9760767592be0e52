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

from llmcomp_hf.codec import FORMAT_VERSION, EncodedTensor, decode, encode
from llmcomp_hf.codec.encoded import format_version

from . import spec
from .helpers import DTYPES, assert_same_bits

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
# (manifest, arrays) per fixture set: versions 1 and 2 (frozen, read forever) and the current version.
SETS = {"v1v2": ("golden.json", "golden.npz"), f"v{FORMAT_VERSION}": (f"golden_v{FORMAT_VERSION}.json", f"golden_v{FORMAT_VERSION}.npz"),
        "v4": ("golden_v4.json", "golden_v4.npz")}  # v4: coder rans-scale (mode 5)
MANIFESTS = {s: json.loads((GOLDEN / files[0]).read_text()) for s, files in SETS.items()}
CASES = [(s, name) for s, manifest in MANIFESTS.items() for name in sorted(manifest)]


@pytest.fixture(scope="module")
def all_arrays() -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for s, (_, npz) in SETS.items():
        with np.load(GOLDEN / npz) as z:
            out[s] = {k: z[k] for k in z.files}
    return out


def expected_tensor(header: dict, raw: np.ndarray) -> torch.Tensor:
    dtype = DTYPES[header["dtype"]].torch
    if raw.size == 0:
        return torch.empty(header["shape"], dtype=dtype)
    return torch.from_numpy(raw.copy()).view(dtype).reshape(header["shape"])


@pytest.mark.parametrize("fixtures,name", CASES)
def test_golden_decodes(fixtures: str, name: str, all_arrays: dict[str, dict[str, np.ndarray]]) -> None:
    arrays, header = all_arrays[fixtures], MANIFESTS[fixtures][name]["header"]
    data, index, raw = arrays[f"{name}.data"], arrays[f"{name}.index"], arrays[f"{name}.raw"]
    want = expected_tensor(header, raw)
    enc = EncodedTensor.from_parts(header, data, index, name=name)
    assert_same_bits(decode(enc), want, name)
    assert_same_bits(decode(enc, threads=1, verify=False), want, name)
    assert np.array_equal(spec.decode(header, data, index).view(np.uint8), raw), f"{name}: spec oracle"


@pytest.mark.parametrize("fixtures,name", CASES)
def test_golden_encoding_has_not_drifted(fixtures: str, name: str, all_arrays: dict[str, dict[str, np.ndarray]]) -> None:
    """Current-version fixtures: the same header and bytes. Older ones: the same bytes, and a header
    that differs only by the version and its checksum (the spec's, over the same original bytes)."""
    arrays, meta = all_arrays[fixtures], MANIFESTS[fixtures][name]
    header, raw = meta["header"], arrays[f"{name}.raw"]
    enc = encode(expected_tensor(header, raw), **meta["encode"])
    if header["version"] == format_version(meta["encode"]["coder"]):
        assert enc.header == header, f"{name}: header drifted"
    else:
        assert enc.header == dict(header, version=FORMAT_VERSION, checksum=enc.header["checksum"]), f"{name}: header drifted"
        assert int(enc.header["checksum"], 16) == spec.checksum(enc.header, raw), f"{name}: checksum drifted"
        assert int(header["checksum"], 16) == spec.checksum(header, raw) == spec.sum32(raw), f"{name}: old checksum"
    assert np.array_equal(enc.index, arrays[f"{name}.index"]), f"{name}: block index drifted"
    assert np.array_equal(enc.data, arrays[f"{name}.data"]), f"{name}: encoded bytes drifted"


@pytest.mark.parametrize("fixtures", sorted(SETS))
def test_golden_reference_encoder_matches(fixtures: str, all_arrays: dict[str, dict[str, np.ndarray]]) -> None:
    from llmcomp_hf.codec import reference
    arrays = all_arrays[fixtures]
    for name, meta in MANIFESTS[fixtures].items():
        want = expected_tensor(meta["header"], arrays[f"{name}.raw"])
        enc = reference.encode_reference(want, **meta["encode"])
        assert np.array_equal(enc.data, arrays[f"{name}.data"]), f"{name}: reference encoder differs"
        assert_same_bits(reference.decode_reference(enc), want, name)
        old = EncodedTensor.from_parts(meta["header"], arrays[f"{name}.data"], arrays[f"{name}.index"], name=name)
        assert_same_bits(reference.decode_reference(old), want, name)


@pytest.mark.parametrize("fixtures", sorted(SETS))
def test_golden_covers_the_format(fixtures: str, all_arrays: dict[str, dict[str, np.ndarray]]) -> None:
    """Each fixture set exercises every mode and several dtypes, so drift anywhere is caught."""
    modes, dtypes = set(), set()
    arrays = all_arrays[fixtures]
    for name, meta in MANIFESTS[fixtures].items():
        h = meta["header"]
        dtypes.add(h["dtype"])
        for m in spec.modes(h, arrays[f"{name}.data"], arrays[f"{name}.index"]):
            modes.update(m)
        assert arrays[f"{name}.raw"].size == math.prod(h["shape"]) * DTYPES[h["dtype"]].itemsize
    if fixtures == "v4":  # rans-scale only: mode 5 (model and references to it), const, on every float dtype
        assert {spec.CONST, spec.RANS_SCALE} <= modes <= {spec.RAW, spec.CONST, spec.RANS, spec.RANS_SCALE}
        assert dtypes == {"bfloat16", "float16", "float32"}
        return
    assert modes == {spec.RAW, spec.CONST, spec.HUFFMAN, spec.RANS, spec.RANS_CTX}
    assert {"bfloat16", "float16", "float32", "int8"} <= dtypes
