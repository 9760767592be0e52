"""Hostile and damaged streams: every failure must be a FormatError (or subclass), never a crash,
a foreign exception or a hang. Inputs are tiny so every byte position can be tried.

Rules checked (verify=True unless said otherwise):
- a structural field changed (mode, lengths, bitmap, code lengths, frequencies, states) -> raises;
- raw/const payload changed -> ChecksumMismatchError; with verify=False the decoded value changes
  at exactly that element; except a plane-1 byte of a block whose plane 0 is mode 4 (its context):
  then plane 0 of that block may decode differently too (or the stream raises), nothing else changes;
- stream bytes changed -> raises, or decodes exactly (e.g. a padding bit);
- any change at all with verify=False -> raises, or returns a tensor of the right dtype and shape.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llmcomp_hf.codec import ChecksumMismatchError, CorruptStreamError, EncodedTensor, decode

from . import spec
from .damage import BASES, BS, Problems, base, field_positions, flip, outcome, tampered
from .helpers import assert_same_bits, from_bits

STRUCTURAL = {"mode", "length", "bitmap", "code_lengths", "stream_lengths", "freqs", "states", "ref", "ctx_head"}
PAYLOAD = {"raw", "value"}


@pytest.mark.parametrize("name", BASES)
def test_targeted_field_flips(name: str) -> None:
    t, enc = base(name)
    blocks = spec.parse(enc.header, enc.data, enc.index)
    problems, fields_seen = Problems(), set()
    for sec, fname, pos in field_positions(enc):
        fields_seen.add(fname)
        for mask in (0x01, 0x80, 0xFF):
            bad = flip(enc, pos, mask)
            what = f"{name}: {fname} byte {pos} (block {sec.block} plane {sec.plane}) ^ {mask:#04x}"
            got = outcome(bad, t)
            if _unused_nibble(enc, sec, fname, pos, mask):
                problems.expect(got, ("raised", "exact"), what)
            elif fname in STRUCTURAL:
                problems.expect(got, ("raised",), what)
            elif fname in PAYLOAD and sec.plane == 1 and blocks[sec.block][0].mode == spec.RANS_CTX:
                problems.expect(got, ("raised",), what)
                want = _with_plane_byte(t, blocks, sec, pos, mask)
                problems.expect(_outside_plane0(bad, want, sec.block), ("raised", "same"), what + " verify=False")
            elif fname in PAYLOAD:
                with pytest.raises(ChecksumMismatchError):
                    decode(bad)
                want = _with_plane_byte(t, blocks, sec, pos, mask)
                assert_same_bits(decode(bad, verify=False), want, f"{what} verify=False")
            else:
                problems.expect(got, ("raised", "exact"), what)
            problems.expect(outcome(bad, t, verify=False), ("raised", "exact", "different"), what + " verify=False")
    assert fields_seen >= {"mode"}
    problems.check()


def _unused_nibble(enc: EncodedTensor, sec: spec.Section, fname: str, pos: int, mask: int) -> bool:
    """True for a flip confined to the padding nibble after an odd number of code lengths."""
    if fname != "code_lengths" or mask & 0x0F:
        return False
    at, size = sec.fields["code_lengths"]
    bm = sec.fields["bitmap"][0]
    k = int(np.unpackbits(enc.data[bm:bm + 32]).sum())
    return pos == at + size - 1 and k % 2 == 1


def _outside_plane0(bad: EncodedTensor, want: torch.Tensor, block: int) -> str:
    """'raised', 'same' (equal to ``want`` except maybe plane 0 of ``block``) or what differs."""
    try:
        got = decode(bad, verify=False)
    except CorruptStreamError:
        return "raised"
    dname = str(want.dtype).removeprefix("torch.")
    g = spec.split_planes(got.reshape(-1).view(torch.uint8).numpy().view(spec.DTYPES[dname].uint), dname)
    w = spec.split_planes(want.reshape(-1).view(torch.uint8).numpy().view(spec.DTYPES[dname].uint), dname)
    lo, hi = block * BS, (block + 1) * BS
    for p, (gp, wp) in enumerate(zip(g, w)):
        diff = np.flatnonzero(gp != wp)
        if p > 0 and diff.size or p == 0 and np.any((diff < lo) | (diff >= hi)):
            return f"plane {p} differs at elements {diff[:5].tolist()}"
    return "same"


def _with_plane_byte(t: torch.Tensor, blocks: list, sec: spec.Section, pos: int, mask: int) -> torch.Tensor:
    """The tensor that a raw/const byte flip must decode to (per the spec's plane merge)."""
    planes = [np.concatenate([blk[p].symbols for blk in blocks]) for p in range(len(blocks[0]))]
    start = sec.block * BS
    if "raw" in sec.fields:
        planes[sec.plane][start + pos - sec.fields["raw"][0]] ^= mask
    else:
        planes[sec.plane][start:start + sec.n] ^= mask
    dname = str(t.dtype).removeprefix("torch.")
    return from_bits(spec.merge_planes(planes, dname), dname, tuple(t.shape))


@pytest.mark.parametrize("name", BASES)
def test_every_byte_flipped(name: str) -> None:
    """Fuzz sweep: every position, a random nonzero mask, both verify settings."""
    t, enc = base(name)
    rng = np.random.default_rng(36)
    problems = Problems()
    for pos in range(enc.data.size):
        mask = int(rng.integers(1, 256))
        bad = flip(enc, pos, mask)
        problems.expect(outcome(bad, t), ("raised", "exact"), f"{name}: byte {pos} ^ {mask:#04x}")
        problems.expect(outcome(bad, t, verify=False), ("raised", "exact", "different"), f"{name}: byte {pos} ^ {mask:#04x} verify=False")
    problems.check()


@given(name=st.sampled_from(list(BASES)), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                                                         min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.floats(0, 1)), verify=st.booleans())
def test_fuzz_random_damage(name: str, flips: list, cut: float | None, verify: bool) -> None:
    t, enc = base(name)
    data = enc.data.copy()
    for frac, mask in flips:
        data[int(frac * data.size)] ^= mask
    index = enc.index.copy()
    if cut is not None:  # truncate, with an index that stays self-consistent
        keep = int(cut * data.size)
        data, index = data[:keep], np.minimum(index, keep)
    got = outcome(tampered(enc, data=data, index=index), t, verify)
    assert got in (("raised", "exact") if verify else ("raised", "exact", "different")), got


@pytest.mark.parametrize("name", BASES)
def test_every_truncation(name: str) -> None:
    t, enc = base(name)
    for keep in range(enc.data.size):
        bad = tampered(enc, data=enc.data[:keep].copy(), index=np.minimum(enc.index, keep))
        assert outcome(bad, t, verify=False) == "raised", f"{name}: truncated to {keep} of {enc.data.size} bytes"
    for keep in (0, enc.data.size // 2, enc.data.size - 1):  # index left as is
        with pytest.raises(CorruptStreamError):
            EncodedTensor.from_parts(enc.header, enc.data[:keep], enc.index)
        with pytest.raises(CorruptStreamError):
            decode(tampered(enc, data=enc.data[:keep].copy()))


@pytest.mark.parametrize("name", ["bf16-huffman", "bf16-rans", "fp16-mixed-rans"])
def test_trailing_garbage_in_block(name: str) -> None:
    """An extra byte at the end of a block: the sections no longer fill it."""
    t, enc = base(name)
    for b in range(enc.index.size - 1):
        end = int(enc.index[b + 1])
        data = np.concatenate([enc.data[:end], [0xA5], enc.data[end:]]).astype(np.uint8)
        index = enc.index + (np.arange(enc.index.size) > b)
        for verify in (True, False):
            assert outcome(tampered(enc, data=data, index=index), t, verify) in ("raised", "exact")
