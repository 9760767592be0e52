"""Golden fixtures of format part 3 (docs/format.md): a committed lossy shard, decoded on every run.

lossy.safetensors holds a uniform-quantized bf16 weight, a rank-2 fp32 weight with a quantized residual
and a plain tensor; lossy_expected.safetensors what loading it gives; lossy_inputs.safetensors the
tensors it was compressed from. The reconstruction is compared bit for bit (the rank-2 product of fp16
factors is exact in float32 on every CPU, see make_golden.py), the transform headers field by field.

If an intended format change breaks these, bump the transform version, rerun tests/format/make_golden.py
(fixtures of older versions stay and keep loading) and update ``FROZEN`` in test_golden_frozen.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from llmcomp_hf.codec import EncodedTensor, decode, encode
from llmcomp_hf.format import PLAIN_PREFIX, SHARD_METADATA, check_plain_file, compress_lossy, load_checkpoint
from llmcomp_hf.format.lossy import TRANSFORM_FORMAT, TRANSFORM_VERSION, LossyWeight
from llmcomp_hf.format.shard import part_key, plain_checksum, transform_key
from llmcomp_hf.transforms import config_from_dict

from .helpers import DATA, assert_same_tensors, json_tensor, read_shard

LOSSY_SHARD = DATA / "lossy.safetensors"
# lossy weight -> (its stages' transforms, their kinds in meta["stages"], the parts its header lists)
LOSSY = {
    "model.layers.0.mlp.up.weight": (["uniform"], ["quantize"], ["weight.codes", "weight.scales"]),
    "model.layers.0.mlp.down.weight": (["lowrank"], ["lowrank"], ["left", "residual.codes", "residual.scales", "right"]),
}
PLAIN = ("model.norm.weight",)
HEADER_FIELDS = {"format", "version", "dtype", "shape", "parts", "meta", "rel_mse", "stored_bytes", "bits_per_weight"}
PART_SUFFIXES = ("llmcomp_data", "llmcomp_index", "llmcomp_header")


@pytest.fixture(scope="module")
def stored() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return read_shard(LOSSY_SHARD)


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return load_file(DATA / "lossy_inputs.safetensors")


def _encoded(tensors: dict[str, torch.Tensor], base: str) -> EncodedTensor:
    h = json_tensor(tensors[part_key(base, "header")])
    return EncodedTensor.from_parts(h, tensors[part_key(base, "data")].numpy(), tensors[part_key(base, "index")].numpy(),
                                    name=base)


def test_lossy_shard_decodes_to_the_expected_bits():
    want = load_file(DATA / "lossy_expected.safetensors")
    assert_same_tensors(load_checkpoint(LOSSY_SHARD), want, "lossy.safetensors")


def test_lossy_key_set_and_metadata(stored):
    tensors, metadata = stored
    keys = {transform_key(n) for n in LOSSY} | set(PLAIN)
    keys |= {f"{n}.{p}.{s}" for n, (_, _, parts) in LOSSY.items() for p in parts for s in PART_SUFFIXES}
    assert set(tensors) == keys
    # a transform header is listed like any plain tensor; encoded parts are not
    plain = {PLAIN_PREFIX + k: plain_checksum(tensors[k]) for k in (*PLAIN, *map(transform_key, LOSSY))}
    assert metadata == {"format": "pt", **SHARD_METADATA, **plain}
    assert check_plain_file(str(LOSSY_SHARD)) == len(plain)


@pytest.mark.parametrize("name", sorted(LOSSY))
def test_transform_header_fields(name, stored, inputs):
    """Every field of docs/format.md part 3's table, with its type and value."""
    tensors = stored[0]
    transforms, kinds, parts = LOSSY[name]
    raw = tensors[transform_key(name)]
    assert raw.dtype == torch.uint8 and raw.dim() == 1
    h = json_tensor(raw)
    assert set(h) == HEADER_FIELDS  # no calibration: none was used
    assert (h["format"], h["version"]) == (TRANSFORM_FORMAT, TRANSFORM_VERSION) == ("llmcomp.transform", 1)
    assert h["dtype"] == str(inputs[name].dtype).removeprefix("torch.") and h["shape"] == list(inputs[name].shape)
    assert h["parts"] == sorted(h["parts"]) == parts
    meta = h["meta"]
    assert {"transform", "config", "shape", "dtype", "stages"} <= set(meta)
    assert (meta["transform"], meta["shape"], meta["dtype"]) == ("pipeline", h["shape"], h["dtype"])
    assert [s["transform"] for s in meta["config"]["stages"]] == transforms and sorted(meta["stages"]) == kinds
    assert isinstance(h["rel_mse"], float) and 0.0 < h["rel_mse"] < 0.05
    stored_bytes = sum(tensors[f"{name}.{p}.{s}"].numel() * tensors[f"{name}.{p}.{s}"].element_size()
                       for p in parts for s in PART_SUFFIXES) + raw.numel()
    assert type(h["stored_bytes"]) is int and h["stored_bytes"] == stored_bytes
    assert h["bits_per_weight"] == round(8.0 * stored_bytes / math.prod(h["shape"]), 4)
    for p in parts:
        enc = _encoded(tensors, f"{name}.{p}")
        assert enc.header["coder"] == "rans"


def test_lossy_pack_has_not_drifted(stored):
    """Decoded parts, re-encoded with their headers' coder and block size and packed as part 3 again,
    give the committed tensors (machine-independent: no transform is re-run)."""
    tensors = stored[0]
    for name, (_, _, parts) in LOSSY.items():
        encoded = {}
        for p in parts:
            old = _encoded(tensors, f"{name}.{p}")
            encoded[p] = encode(decode(old), coder=old.header["coder"], block_size=old.header["block_size"])
        packed = LossyWeight(name, json_tensor(tensors[transform_key(name)]), encoded).pack()
        assert_same_tensors(packed, {k: v for k, v in tensors.items() if k.startswith(name + ".")}, name)


def test_uniform_compress_lossy_has_not_drifted(stored, inputs):
    """compress_lossy on the committed input writes the committed weight (a uniform quantizer is elementwise,
    so it is bit-reproducible anywhere; the low-rank one runs an SVD, so only its decode is pinned)."""
    name = "model.layers.0.mlp.up.weight"
    tensors = stored[0]
    header = json_tensor(tensors[transform_key(name)])
    first = _encoded(tensors, f"{name}.{header['parts'][0]}").header
    lw, recon = compress_lossy(name, inputs[name], config_from_dict(header["meta"]["config"]),
                               coder=first["coder"], block_size=first["block_size"])
    assert lw.header == dict(header, rel_mse=pytest.approx(header["rel_mse"], rel=1e-9))
    want = {k: v for k, v in tensors.items() if k.startswith(name + ".")}
    assert_same_tensors({k: v for k, v in lw.pack().items() if k != transform_key(name)},
                        {k: v for k, v in want.items() if k != transform_key(name)}, "compress_lossy")
    assert_same_tensors({name: recon}, {name: load_file(DATA / "lossy_expected.safetensors")[name]}, "reconstruction")
