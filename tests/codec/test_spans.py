"""codec.spans: runs of blocks decoded into a small buffer (no checksum), against the reference decoder,
on damaged streams and with arguments that do not fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcomp_hf.codec import CorruptStreamError, FormatError, decode, encode
from llmcomp_hf.codec.api import thread_scratch
from llmcomp_hf.codec.reference import decode_reference
from llmcomp_hf.codec.spans import DONE, ERR_ARGS, FREE, SpanDecoder, all_done, decode_claiming, decode_span

from .damage import BASES, base, flip
from .helpers import DTYPES, tensor_of

BS = 256
WORD = {"bfloat16": np.uint16, "float16": np.uint16, "float32": np.uint32}


def _buffer(dtype: str, elements: int, pad: int = 0) -> np.ndarray:
    """Words for ``elements`` elements of ``dtype`` (bytes for non-float dtypes), plus ``pad`` sentinel words."""
    word = WORD.get(dtype, np.uint8)
    per = 1 if dtype in WORD else DTYPES[dtype].itemsize
    return np.full(elements * per + pad, 0xA5, word)


def _span_bytes(t: torch.Tensor, lo: int, hi: int) -> bytes:
    """The reference bytes of blocks [lo, hi) of ``t``."""
    raw = t.reshape(-1).view(torch.uint8).numpy()
    size = t.element_size()
    return raw[lo * BS * size : min(hi * BS, t.numel()) * size].tobytes()


CASES = [("bfloat16", "huffman"), ("bfloat16", "rans"), ("bfloat16", "rans-ctx"), ("float16", "huffman"),
         ("float32", "huffman"), ("float32", "rans-ctx"), ("int8", "rans"), ("bool", "raw"), ("int32", "huffman")]


@pytest.mark.parametrize("dtype,coder", CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_spans_match_the_reference_decoder(dtype: str, coder: str, threads: int) -> None:
    t = tensor_of(dtype, 9 * BS + 77, "skewed" if dtype != "float32" else "specials", seed=5)
    enc = encode(t, coder=coder, block_size=BS, name="w.weight")
    want = decode_reference(enc)
    n_blocks = enc.index.size - 1
    dec = SpanDecoder(enc)
    for lo, hi in ((0, n_blocks), (0, 1), (2, 7), (n_blocks - 1, n_blocks), (3, 3), (1, n_blocks)):
        out = _buffer(dtype, (hi - lo) * BS, pad=16)
        dec.decode(lo, hi, out, threads)
        got = out.view(np.uint8)[: len(_span_bytes(want, lo, hi))].tobytes()
        assert got == _span_bytes(want, lo, hi), (lo, hi)
        assert (out[-16:] == out.dtype.type(0xA5)).all(), "wrote past the span"


def test_span_offsets_follow_first() -> None:
    """``decode_span`` puts block b at (b - first) * block_size: a run continues a buffer."""
    t = tensor_of("bfloat16", 6 * BS, "skewed", seed=6)
    enc = encode(t, block_size=BS)
    dec = SpanDecoder(enc)
    out = _buffer("bfloat16", 6 * BS)
    errs, err_plane = np.zeros(6, np.int64), np.full(6, -1, np.int64)
    scratch = [part[0] for part in thread_scratch(1, 2, BS)]
    assert decode_span(*dec.args, 0, 0, 3, out, errs, err_plane, *scratch) == 0
    assert decode_span(*dec.args, 0, 3, 6, out, errs, err_plane, *scratch) == 0
    assert not errs.any()
    assert out.tobytes() == t.reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("lo,hi,elements", [(-1, 2, 3 * BS), (2, 1, BS), (0, 4, 4 * BS), (1, 3, 2 * BS - 1), (0, 3, 0)])
def test_arguments_that_do_not_fit_are_refused_before_any_write(lo: int, hi: int, elements: int) -> None:
    t = tensor_of("bfloat16", 3 * BS, "skewed", seed=7)
    dec = SpanDecoder(encode(t, block_size=BS, name="w.weight"))
    out = _buffer("bfloat16", elements, pad=8)
    with pytest.raises(ValueError, match="do not fit"):
        dec.decode(lo, hi, out[:elements], threads=1)
    with pytest.raises(ValueError, match="do not fit"):
        dec.decode(lo, hi, out[:elements], threads=2)
    assert (out == 0xA5).all()


def test_scratch_that_does_not_fit_is_refused() -> None:
    t = tensor_of("bfloat16", 2 * BS, "skewed", seed=8)
    dec = SpanDecoder(encode(t, block_size=BS))
    out = _buffer("bfloat16", 2 * BS)
    errs, err_plane = np.zeros(2, np.int64), np.full(2, -1, np.int64)
    for planes, block in ((1, BS), (2, BS // 2)):  # too few planes, blocks too small
        assert decode_span(*dec.args, 0, 0, 2, out, errs, err_plane, *(p[0] for p in thread_scratch(1, planes, block))) == ERR_ARGS
    state = np.zeros(1, np.int64)  # shorter than the span
    assert decode_claiming(*dec.args, 0, 2, out, errs, err_plane, state, 0, *(p[0] for p in thread_scratch(1, 2, BS))) == ERR_ARGS
    assert decode_span(*dec.args, 0, 0, 2, out, errs[:1], err_plane, *(p[0] for p in thread_scratch(1, 2, BS))) == ERR_ARGS
    assert (out == 0xA5).all() and not errs.any()


@pytest.mark.parametrize("name", sorted(BASES))
def test_damaged_streams_fail_like_decode(name: str) -> None:
    """Every byte of every base stream flipped: the span decoder raises (naming the tensor) exactly when
    ``decode(verify=False)`` does, and otherwise writes the same bytes."""
    t, enc = base(name)
    n_blocks = enc.index.size - 1
    rng = np.random.default_rng(3)
    for pos in range(enc.data.size):
        bad = flip(enc, pos, int(rng.integers(1, 256)))
        try:
            want = decode(bad, verify=False).reshape(-1).view(torch.uint8).numpy().tobytes()
        except FormatError:
            want = None
        for threads in (1, 2):
            out = _buffer(enc.dtype, n_blocks * BS)
            try:
                SpanDecoder(bad).decode(0, n_blocks, out, threads)
                got = out.view(np.uint8)[: t.numel() * t.element_size()].tobytes()
            except CorruptStreamError as exc:
                assert "weight" in str(exc), exc
                got = None
            assert got == want, (name, pos, threads)


def test_claiming_decodes_only_free_blocks_from_its_start() -> None:
    t = tensor_of("bfloat16", 6 * BS, "skewed", seed=9)
    dec = SpanDecoder(encode(t, block_size=BS))
    want = t.reshape(-1).view(torch.int16).numpy().view(np.uint16)
    out = _buffer("bfloat16", 6 * BS)
    errs, err_plane = np.zeros(6, np.int64), np.full(6, -1, np.int64)
    scratch = [p[0] for p in thread_scratch(1, 2, BS)]
    state = np.array([FREE, DONE, FREE, FREE, DONE, FREE], np.int64)  # blocks 1 and 4 taken by "another thread"
    assert decode_claiming(*dec.args, 0, 6, out, errs, err_plane, state, 4, *scratch) == 0
    assert all_done(state) and not errs.any()
    for b in range(6):
        got = out[b * BS : (b + 1) * BS]
        assert (got == 0xA5).all() if b in (1, 4) else np.array_equal(got, want[b * BS : (b + 1) * BS]), b
