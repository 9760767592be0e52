"""Golden fixtures of format part 2 (docs/format.md): a committed lossless shard, decoded on every run.

The shard (tests/format/data/shard.safetensors) holds one compressed weight per coder, two plain tensors and
the shard ``__metadata__``; shard_expected.safetensors holds the decoded tensors. The tests decode it,
pin its key set, part dtypes and metadata, and check that today's writers (``format.pack`` as the
quantizer saves, and ``llmcomp compress``'s streaming writer) still produce the same stored bytes.

If an intended format change breaks these, bump the format version, rerun tests/format/make_golden.py
(fixtures of older versions stay and keep loading) and update ``FROZEN`` in test_golden_frozen.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmcomp_hf.codec import FORMAT_VERSION, encode
from llmcomp_hf.config import CODERS, LosslessConfig
from llmcomp_hf.format import (
    PLAIN_PREFIX,
    SHARD_METADATA,
    check_plain_file,
    load_checkpoint,
    pack,
    part_key,
    plain_checksums,
)
from llmcomp_hf.format.shard import plain_checksum

from .helpers import DATA, assert_same_tensors, json_tensor, read_raw, read_shard

SHARD = DATA / "shard.safetensors"
EXPECTED = DATA / "shard_expected.safetensors"
# compressed weight -> the coder it was written with (every coder once)
COMPRESSED = {
    "model.layers.0.attn.q.weight": "huffman",
    "model.layers.0.attn.k.weight": "rans",
    "model.layers.0.attn.v.weight": "rans-ctx",
    "model.layers.0.attn.o.weight": "raw",
}
PLAIN = ("model.layers.0.attn.q.bias", "model.norm.weight")
PART_SUFFIXES = ("llmcomp_data", "llmcomp_index", "llmcomp_header")


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(EXPECTED)


@pytest.fixture(scope="module")
def stored() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return read_shard(SHARD)


def test_shard_decodes_to_the_expected_bits(expected):
    assert_same_tensors(load_checkpoint(SHARD), expected, "shard.safetensors")
    assert_same_tensors(load_checkpoint(SHARD, verify=False), expected, "shard.safetensors (verify=False)")


def test_shard_key_set(stored):
    keys = {f"{name}.{suffix}" for name in COMPRESSED for suffix in PART_SUFFIXES} | set(PLAIN)
    assert set(stored[0]) == keys
    assert {part_key(name, p) for name in COMPRESSED for p in ("data", "index", "header")} <= keys


def test_shard_parts_are_what_the_format_says(stored, expected):
    tensors = stored[0]
    for name, coder in COMPRESSED.items():
        data, index, header = (tensors[f"{name}.{s}"] for s in PART_SUFFIXES)
        h = json_tensor(header)
        assert set(h) == {"format", "version", "dtype", "shape", "coder", "block_size", "checksum"}
        assert (h["format"], h["version"], h["coder"]) == ("llmcomp.tensor", FORMAT_VERSION, coder)
        assert h["dtype"] == str(expected[name].dtype).removeprefix("torch.")
        assert h["shape"] == list(expected[name].shape)
        assert len(h["checksum"]) == 16 and int(h["checksum"], 16) >= 0
        n_blocks = math.ceil(math.prod(h["shape"]) / h["block_size"])
        assert data.dtype == torch.uint8 and data.dim() == 1
        assert index.dtype == torch.int64 and list(index.shape) == [n_blocks + 1] and n_blocks > 1
        assert index[0] == 0 and index[-1] == data.numel() and bool((index[1:] >= index[:-1]).all())
        assert header.dtype == torch.uint8 and header.dim() == 1
        # a plain tensor's checksum is the one a version-3 header of the same tensor holds
        assert plain_checksum(expected[name]) == h["checksum"]


def test_shard_metadata(stored, expected):
    metadata = stored[1]
    plain = {PLAIN_PREFIX + key: plain_checksum(expected[key]) for key in PLAIN}
    assert metadata == {"format": "pt", "llmcomp.format": "llmcomp.shard", "llmcomp.version": "1", **plain}
    assert {k: metadata[k] for k in SHARD_METADATA} == SHARD_METADATA
    assert check_plain_file(str(SHARD)) == len(PLAIN)


def _packed(expected: dict[str, torch.Tensor], stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Today's pack of the expected tensors, each weight with its committed header's coder and block size."""
    state: dict[str, torch.Tensor] = {}
    for key, tensor in expected.items():
        if key in COMPRESSED:
            h = json_tensor(stored[part_key(key, "header")])
            state.update(pack(key, encode(tensor, coder=h["coder"], block_size=h["block_size"])))
        else:
            state[key] = tensor
    return state


def test_pack_has_not_drifted(expected, stored, tmp_path):
    """format.pack (what the quantizer saves) writes the same tensors, metadata and file layout."""
    state = _packed(expected, stored[0])
    assert_same_tensors(state, stored[0], "pack")
    out = tmp_path / "shard.safetensors"
    save_file(state, out, metadata={"format": "pt", **SHARD_METADATA, **plain_checksums(state)})
    assert read_raw(out) == read_raw(SHARD), "the shard file written today differs from the committed one"


@pytest.mark.parametrize("coder", [c for c in CODERS if c in COMPRESSED.values()])  # rans-scale: codec goldens (golden_v4)
def test_stream_compress_has_not_drifted(coder, expected, stored, tmp_path):
    """``llmcomp compress`` (the streaming writer) stores the weight of ``coder`` with the committed bytes,
    the plain tensors as they are, and the same shard metadata."""
    from llmcomp_hf.stream.compress import compress_checkpoint

    (tmp_path / "src").mkdir()
    save_file(expected, tmp_path / "src" / "model.safetensors", metadata={"format": "pt"})
    block_size = json_tensor(stored[0][part_key(next(iter(COMPRESSED)), "header")])["block_size"]
    config = LosslessConfig(coder=coder, block_size=block_size, min_numel=256)
    compress_checkpoint(tmp_path / "src", tmp_path / "out", config)
    got, metadata = read_shard(tmp_path / "out" / "model.safetensors")
    assert set(got) == set(stored[0])
    assert metadata == stored[1]
    (name,) = [n for n, c in COMPRESSED.items() if c == coder]
    want = {k: v for k, v in stored[0].items() if k.startswith(name + ".llmcomp_") or k in PLAIN}
    assert_same_tensors({k: got[k] for k in want}, want, f"llmcomp compress --coder {coder}")
