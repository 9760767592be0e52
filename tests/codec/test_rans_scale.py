"""Mode 5 / coder rans-scale (docs/format.md): kernels against the numpy reference and the spec oracle,
every bit pattern, the per-tensor choice against rans-ctx, and hostile mode-5 sections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcomp_hf.codec import CorruptStreamError, EncodedTensor, decode, decode_many, encode
from llmcomp_hf.codec.reference import decode_reference, encode_reference

from . import spec
from .helpers import SPECIALS, DTYPES, assert_same_bits

BS = 2048
FLOATS = (torch.bfloat16, torch.float16, torch.float32)


def row_scaled(rows: int, cols: int, dtype: torch.dtype, seed: int, spread: float = 1.5) -> torch.Tensor:
    """Rows and columns of different scale (an embedding's structure), a few zeros."""
    g = np.random.default_rng(seed)
    w = g.normal(0.0, 0.02, (rows, cols)) * np.exp2(g.normal(0, spread, (rows, 1))) * np.exp2(g.normal(0, 0.5, (1, cols)))
    w[0, :7] = 0.0
    return torch.from_numpy(w.astype(np.float32)).to(dtype)


def mode5_blocks(enc: EncodedTensor) -> list[int]:
    return [b for b in range(enc.index.size - 1) if enc.data[enc.index[b]] == 5]


def same_bytes(a: EncodedTensor, b: EncodedTensor) -> bool:
    return a.header == b.header and np.array_equal(a.data, b.data) and np.array_equal(a.index, b.index)


@pytest.mark.parametrize("dtype", FLOATS)
def test_kernel_reference_spec_agree(dtype: torch.dtype) -> None:
    t = row_scaled(96, 128, dtype, 1)
    enc = encode(t, coder="rans-scale", block_size=BS)
    assert enc.header["coder"] == "rans-scale" and enc.header["version"] == 4
    assert len(mode5_blocks(enc)) >= 4, "mode 5 not used"
    assert same_bytes(enc, encode_reference(t, coder="rans-scale", block_size=BS))
    assert_same_bits(decode(enc), t)
    assert_same_bits(decode(enc, threads=1), t)
    assert_same_bits(decode_reference(enc), t)
    assert np.array_equal(spec.decode(enc.header, enc.data, enc.index).view(np.uint8),
                          t.reshape(-1).view(torch.uint8).numpy())


@pytest.mark.parametrize("dtype", FLOATS)
def test_every_special_bit_pattern(dtype: torch.dtype) -> None:
    """NaN payloads, ±0, ±Inf, subnormals scattered over rows of different scale: bit-exact."""
    t = row_scaled(64, 96, dtype, 2)
    dt = DTYPES[str(dtype)[6:]]
    bits = t.reshape(-1).numpy().view(dt.uint) if dtype != torch.bfloat16 else t.reshape(-1).view(torch.int16).numpy().view(np.uint16)
    pos = np.arange(len(SPECIALS[dt.name])) * 331 % bits.size
    bits[pos] = np.array(SPECIALS[dt.name], dtype=dt.uint)
    enc = encode(t, coder="rans-scale", block_size=BS)
    assert_same_bits(decode(enc), t)
    assert_same_bits(decode_reference(enc), t)


def test_rows_longer_than_the_column_map_limit() -> None:
    """L > 65536: no column map (col = 0); kernels, reference and spec agree."""
    t = row_scaled(2, 70000, torch.bfloat16, 3, spread=3.0)
    enc = encode(t, coder="rans-scale", block_size=8192)
    assert mode5_blocks(enc)
    first = int(enc.index[mode5_blocks(enc)[0]]) + 6
    assert enc.data[first] >> 2 == 0, "a column map was stored"
    assert_same_bits(decode(enc), t)
    spec.decode(enc.header, enc.data, enc.index)


@pytest.mark.parametrize("shape", [(4096,), (1000, 8), (1, 5000)])
def test_falls_back_to_rans_ctx_where_mode5_does_not_apply(shape: tuple[int, ...]) -> None:
    """1-D tensors, rows under 16 elements, a single row: the rans-ctx stream (version 3)."""
    t = torch.randn(shape).to(torch.bfloat16)
    enc = encode(t, coder="rans-scale", block_size=BS)
    ctx = encode(t, coder="rans-ctx", block_size=BS)
    assert same_bytes(enc, ctx) and enc.header["version"] == 3
    assert same_bytes(enc, encode_reference(t, coder="rans-scale", block_size=BS))


def test_the_smaller_stream_is_kept_and_many_equals_one() -> None:
    ts = [row_scaled(96, 128, torch.bfloat16, 4), torch.randn(300, 64).to(torch.bfloat16), torch.randn(64)]
    encs = [encode(t, coder="rans-scale", block_size=BS) for t in ts]
    for t, enc in zip(ts, encs):
        assert enc.nbytes <= encode(t, coder="rans-ctx", block_size=BS).nbytes
    from llmcomp_hf.codec import encode_many
    many = encode_many(ts, coder="rans-scale", block_size=BS, threads=2)
    assert all(same_bytes(a, b) for a, b in zip(encs, many))
    for t, out in zip(ts, decode_many(many, threads=2)):
        assert_same_bits(out, t)


def test_threads_do_not_change_the_bytes() -> None:
    t = row_scaled(400, 256, torch.float32, 5)  # 50 blocks: 4 groups
    a, b = encode(t, coder="rans-scale", block_size=BS, threads=1), encode(t, coder="rans-scale", block_size=BS, threads=2)
    assert same_bytes(a, b)


# --- hostile mode-5 sections --------------------------------------------------------------------

def _encoded() -> EncodedTensor:
    enc = encode(row_scaled(96, 128, torch.bfloat16, 6), coder="rans-scale", block_size=BS)
    assert len(mode5_blocks(enc)) >= 3
    return enc


def _patched(enc: EncodedTensor, at: int, value: bytes) -> EncodedTensor:
    data = enc.data.copy()
    data[at : at + len(value)] = np.frombuffer(value, np.uint8)
    return EncodedTensor(dict(enc.header), data, enc.index.copy(), "patched")


def _refuse(bad: EncodedTensor) -> None:
    with pytest.raises(CorruptStreamError):
        decode(bad, verify=False)
    with pytest.raises(CorruptStreamError):
        decode(bad, threads=1, verify=False)
    with pytest.raises((CorruptStreamError, ValueError)):
        decode_reference(bad, verify=False)
    with pytest.raises(spec.SpecViolation):
        spec.parse(bad.header, bad.data, bad.index)


@pytest.mark.parametrize("field,value", [
    ("head", bytes([8])), ("head", bytes([0x83])),            # reserved bits of k | col << 2
    ("L", (0).to_bytes(4, "little")), ("L", (15).to_bytes(4, "little")),  # L under 16
    ("L", (65537).to_bytes(4, "little")),                     # a column map with L > 65536
    ("L", (2**32 - 1).to_bytes(4, "little")),
    ("col_order", bytes([13])),                               # exp-Golomb order > 12
])
def test_model_fields_out_of_range(field: str, value: bytes) -> None:
    enc = _encoded()
    p = int(enc.index[mode5_blocks(enc)[0]]) + 5  # the ref byte
    at = {"head": p + 1, "L": p + 2, "col_order": p + 6}[field]
    _refuse(_patched(enc, at, value))


@pytest.mark.parametrize("ref", [1, 2, 15])
def test_ref_outside_the_group_or_to_a_block_without_model(ref: int) -> None:
    enc = _encoded()
    first = mode5_blocks(enc)[0]
    p = int(enc.index[first]) + 5
    _refuse(_patched(enc, p, bytes([(int(enc.data[p]) & 0xF0) | ref])))


def test_values_past_127_and_truncated_sections() -> None:
    enc = _encoded()
    b = mode5_blocks(enc)[1]  # a block that refers to the model: ref byte, then its row list
    p = int(enc.index[b]) + 5
    assert enc.data[p] & 15
    _refuse(_patched(enc, p + 1, bytes([13])))  # row-list order 13
    size = int.from_bytes(enc.data[p - 4 : p].tobytes(), "little")
    for cut in (1, 2, 7, size // 2):  # the section claims fewer bytes: the rest is a bogus next section
        bad = _patched(enc, p - 4, (size - cut).to_bytes(4, "little"))
        with pytest.raises(CorruptStreamError):
            decode(bad, verify=False)


def test_mode5_is_corrupt_unless_the_coder_is_rans_scale() -> None:
    enc = _encoded()
    for coder, version in (("rans-ctx", 3), ("rans", 3), ("rans-ctx", 4), ("huffman", 4)):
        bad = EncodedTensor(dict(enc.header, coder=coder, version=version), enc.data, enc.index, "relabelled")
        with pytest.raises(CorruptStreamError, match="mode-5"):
            decode(bad, verify=False)
    with pytest.raises(Exception, match="version 4"):
        EncodedTensor.from_parts(dict(enc.header, version=3), enc.data, enc.index)


def test_k3_models_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder stops at k = 2; the format allows k = 3 (32 tables): a reference encoder made to
    use k = 3 writes such models, and the kernels and the spec oracle decode them."""
    import llmcomp_hf.codec.rans_ctx as rans_ctx
    import llmcomp_hf.codec.reference_scale as reference_scale

    def k3(hists, L, cols, has_col, tables):
        total = sum(hists)
        present = total.sum(axis=0)
        return 3, rans_ctx.tables(reference_scale.fold(total, 3), present), present

    monkeypatch.setattr(reference_scale, "group_model", k3)
    t = real_rows(torch.bfloat16)
    enc = encode_reference(t, coder="rans-scale", block_size=32768)
    heads = [int(enc.data[enc.index[b] + 6]) & 3 for b in mode5_blocks(enc) if enc.data[enc.index[b] + 5] & 15 == 0]
    assert heads and set(heads) == {3}
    assert_same_bits(decode(enc), t)
    assert_same_bits(decode(enc, threads=1), t)
    spec.decode(enc.header, enc.data, enc.index)


def real_rows(dtype: torch.dtype) -> torch.Tensor:
    """The first 256 rows of MiniLM's word embedding (tokens whose scales differ a lot)."""
    from tests.fuzz.seeds import _minilm_weights

    (_, w), = _minilm_weights((("embeddings.word_embeddings.weight", 256, 384),))
    return w.to(dtype).contiguous()
