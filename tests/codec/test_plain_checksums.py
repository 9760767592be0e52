"""Plain (uncompressed) tensors carry a checksum too (issue 8): per-tensor entries in the shard's
``__metadata__`` (the same dict transformers writes into every shard), checked on load and verify."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from llmcomp_hf.codec import ChecksumMismatchError, FormatError, encode
from llmcomp_hf.codec.encoded import checksum_of
from llmcomp_hf.format import check_plain, load_checkpoint, pack, plain_checksums
from llmcomp_hf.format.shard import PLAIN_PREFIX, check_plain_file

from . import spec
from .helpers import raw_bytes


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {
        "norm.weight": torch.randn(64, generator=g).to(torch.bfloat16),
        "proj.bias": torch.randn(48, generator=g),
        "pos_ids": torch.arange(10, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5, dtype=torch.float16),
        "empty": torch.zeros(0, 4),
    }
    state.update(pack("proj.weight", encode(torch.randn(48, 64, generator=g).to(torch.bfloat16), name="proj.weight")))
    return state


def test_entries_for_plain_tensors_only_and_as_the_spec_says() -> None:
    state = _state()
    meta = plain_checksums(state)
    plain = {"norm.weight", "proj.bias", "pos_ids", "mask", "scalar", "empty"}
    assert set(meta) == {PLAIN_PREFIX + k for k in plain}
    for key in plain:
        t = state[key]
        header = {"version": 3, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        assert int(meta[PLAIN_PREFIX + key], 16) == spec.checksum(header, raw_bytes(t)), key
    assert all(isinstance(v, str) and len(v) == 16 for v in meta.values())
    assert plain_checksums({"offloaded": torch.empty(4, device="meta")}) == {}  # no data to hash here


def test_a_flipped_byte_in_a_plain_tensor_is_caught_by_name() -> None:
    state = _state()
    meta = plain_checksums(state)
    assert check_plain(state, meta, "s.safetensors") == 6
    bad = dict(state, **{"proj.bias": state["proj.bias"].clone()})
    bad["proj.bias"].view(torch.uint8)[5] ^= 0x10
    with pytest.raises(ChecksumMismatchError, match=r"proj\.bias.*s\.safetensors"):
        check_plain(bad, meta, "s.safetensors")


def test_reinterpreted_or_reshaped_plain_tensors_are_caught() -> None:
    state = _state()
    meta = plain_checksums(state)
    for key, edited in (("norm.weight", state["norm.weight"].view(torch.float16)),
                        ("proj.bias", state["proj.bias"].reshape(6, 8)),
                        ("pos_ids", state["pos_ids"].view(torch.int32))):
        with pytest.raises(ChecksumMismatchError, match=key.replace(".", r"\.")):
            check_plain(dict(state, **{key: edited}), meta)


def test_entries_of_other_shards_are_ignored_and_missing_ones_skipped() -> None:
    state = _state()
    meta = plain_checksums(state)  # the whole model's, as transformers writes into every shard
    assert check_plain({"mask": state["mask"]}, meta) == 1
    assert check_plain(state, {}) == 0  # an older or re-sharded checkpoint: nothing to check


def test_a_malformed_entry_is_a_format_error() -> None:
    state = _state()
    with pytest.raises(FormatError, match=r"mask"):
        check_plain(state, {PLAIN_PREFIX + "mask": "not hex"})


def test_shard_file_and_load_checkpoint_check_plain_tensors(tmp_path) -> None:
    state = _state()
    meta = {"format": "pt", **plain_checksums(state)}
    file = tmp_path / "model.safetensors"
    save_file(state, str(file), metadata=meta)
    assert check_plain_file(str(file)) == 6
    load_checkpoint(tmp_path)
    bad = dict(state, **{"norm.weight": state["norm.weight"].clone()})
    bad["norm.weight"].view(torch.uint8)[0] ^= 1
    save_file(bad, str(file), metadata=meta)
    with pytest.raises(ChecksumMismatchError, match=r"norm\.weight.*model\.safetensors"):
        check_plain_file(str(file))
    with pytest.raises(ChecksumMismatchError, match=r"norm\.weight.*model\.safetensors"):
        load_checkpoint(tmp_path)


def test_checksum_is_what_an_encoded_header_would_hold() -> None:
    t = torch.randn(7, 9).to(torch.bfloat16)
    enc = encode(t)
    assert plain_checksums({"x": t})[PLAIN_PREFIX + "x"] == enc.header["checksum"] == checksum_of(enc.header, spec.sum32(raw_bytes(t)))
