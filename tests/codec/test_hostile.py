"""Hand-made hostile inputs: tampered index and header, foreign array types, crafted sections
(huge lengths, bad Huffman/rANS tables, unknown modes). Each must raise a FormatError (or, where
noted, decode exactly), never crash or raise anything else.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmcomp_hf.codec import ChecksumMismatchError, CorruptStreamError, EncodedTensor, FormatError, decode, encode

from . import spec
from .damage import BS, base, outcome, tampered
from .helpers import assert_same_bits, tensor_of


# --- index ---------------------------------------------------------------------------------------

def _index_cases(i: np.ndarray, size: int) -> list[tuple[str, np.ndarray, bool]]:
    """(what, index, whether from_parts alone must already reject it)."""
    cases = []
    for b in range(1, i.size - 1):
        for d in (-1, 1):
            j = i.copy()
            j[b] += d
            cases.append((f"boundary {b} {d:+d}", j, False))
    swapped = i.copy()
    swapped[1], swapped[2] = i[2], i[1]
    cases += [
        ("start 1", np.concatenate([[1], i[1:]]), True),
        ("decreasing", swapped, True),
        ("too long", np.concatenate([i, [size]]), True),
        ("too short", i[:-1].copy(), True),
        ("negative", np.concatenate([[0], -i[1:-1], [size]]), True),
        ("huge", np.concatenate([[0], np.full(i.size - 2, 2**62), [size]]), True),
        ("end past data", np.concatenate([i[:-1], [size + 1]]), True),
        ("2-D", i.reshape(1, -1), False),
    ]
    return [(n, c.astype(np.int64), rejects) for n, c, rejects in cases]


@pytest.mark.parametrize("name", ["bf16-huffman", "int8-rans", "fp16-mixed-rans"])
def test_index_tampering(name: str) -> None:
    t, enc = base(name)
    assert enc.index.size >= 4
    for what, index, from_parts_rejects in _index_cases(enc.index, enc.data.size):
        for verify in (True, False):
            assert outcome(tampered(enc, index=index), t, verify) == "raised", f"{name}: index {what}"
        if from_parts_rejects:
            with pytest.raises(FormatError):
                EncodedTensor.from_parts(enc.header, enc.data, index)


def test_swapped_blocks() -> None:
    """Two full blocks exchanged with a consistent index: valid streams, wrong order."""
    t = tensor_of("bfloat16", 2 * BS, "skewed", 37)
    enc = encode(t, coder="huffman", block_size=BS)
    a, b = enc.data[: enc.index[1]], enc.data[enc.index[1]:]
    bad = tampered(enc, data=np.concatenate([b, a]), index=np.array([0, b.size, enc.data.size], np.int64))
    with pytest.raises(ChecksumMismatchError):
        decode(bad)
    want = torch.cat([t[BS:], t[:BS]])
    assert_same_bits(decode(bad, verify=False), want)


# --- header --------------------------------------------------------------------------------------

HEADER_CASES = [
    ("format", "llmcomp.tensr"), ("format", None), ("version", 5), ("version", 0), ("version", "1"),
    ("version", None), ("version", True), ("version", 1.0), ("dtype", "float128"), ("dtype", "complex64"),
    ("dtype", "uint16"), ("dtype", None), ("coder", "zstd"), ("coder", None), ("block_size", 255),
    ("block_size", 300), ("block_size", 2**25), ("block_size", True), ("block_size", 256.0), ("block_size", "256"),
    ("checksum", "123"), ("checksum", "zzzzzzzzzzzzzzzz"), ("checksum", 12), ("checksum", None),
    ("shape", [-1]), ("shape", [1.5]), ("shape", "abc"), ("shape", [2**41]), ("shape", [1] * 17),
    ("shape", [True]), ("shape", None), ("shape", [2**20, 2**20, 2]),
]


@pytest.mark.parametrize("key,value", HEADER_CASES)
def test_header_tampering(key: str, value: object) -> None:
    t, enc = base("bf16-huffman")
    header = dict(enc.header, **{key: value})
    with pytest.raises(FormatError):
        EncodedTensor.from_parts(header, enc.data, enc.index)
    with pytest.raises(FormatError):
        decode(tampered(enc, header=header))


def test_header_missing_key_and_bad_json() -> None:
    _, enc = base("int8-rans")
    for key in enc.header:
        header = {k: v for k, v in enc.header.items() if k != key}
        with pytest.raises(FormatError):
            EncodedTensor.from_parts(header, enc.data, enc.index)
    for text in ("", "{", "[]", "null", '"x"', json.dumps(enc.header)[:-1]):
        with pytest.raises(FormatError):
            EncodedTensor.from_parts(text, enc.data, enc.index)


@pytest.mark.parametrize("key,value", [("checksum", "0" * 16), ("dtype", "int16"), ("shape", [2 * BS + 189])])
def test_header_consistent_but_wrong(key: str, value: object) -> None:
    """A well-formed header that does not match the data: caught by parsing or by the checksum."""
    t, enc = base("bf16-huffman")
    header = dict(enc.header, **{key: value})
    bad = EncodedTensor.from_parts(header, enc.data, enc.index)
    with pytest.raises(FormatError):
        decode(bad)


def test_absurd_shape_with_empty_blocks_fails_fast() -> None:
    """2**31 int8 elements in 128 blocks of 2**24, every block 0 bytes: no 2 GB decode attempt."""
    header = {"format": "llmcomp.tensor", "version": 1, "dtype": "int8", "shape": [2**31], "coder": "raw",
              "block_size": 2**24, "checksum": "0" * 16}
    # Rejected by validation (every block needs >= 2 bytes a plane), before any output is allocated.
    with pytest.raises(CorruptStreamError, match="shorter than"):
        EncodedTensor.from_parts(header, np.zeros(0, np.uint8), np.zeros(129, np.int64))
    bad = tampered(encode(torch.zeros(3 * BS, dtype=torch.int8), coder="raw", block_size=BS),
                   header=header, data=np.zeros(0, np.uint8), index=np.zeros(129, np.int64))
    with pytest.raises(CorruptStreamError, match="shorter than"):
        decode(bad)


@pytest.mark.parametrize("data", [np.zeros(10, np.int8), np.zeros(10, np.float32), np.zeros(10, np.uint16),
                                  np.zeros(10, np.int64), np.zeros((2, 5), np.uint8)])
def test_wrong_array_types_direct(data: np.ndarray) -> None:
    """An EncodedTensor built by hand (no from_parts) with a foreign data array."""
    _, enc = base("int8-rans")
    index = np.concatenate([enc.index[:-1].clip(max=data.shape[0]), [data.shape[0]]]).astype(np.int64)
    assert outcome(tampered(enc, data=data, index=index), torch.zeros(2 * BS + 3, dtype=torch.int8)) == "raised"


@pytest.mark.parametrize("index_dtype", [np.int32, np.uint64, np.float64])
def test_wrong_index_type_direct(index_dtype: type) -> None:
    t, enc = base("int8-rans")
    assert outcome(tampered(enc, index=enc.index.astype(index_dtype)), t) in ("raised", "exact")


# --- hand-made hostile sections ------------------------------------------------------------------

def _sections(enc: EncodedTensor, mode: int) -> list[spec.Section]:
    return [s for blk in spec.parse(enc.header, enc.data, enc.index) for s in blk if s.mode == mode]


def _put(enc: EncodedTensor, at: int, raw: bytes) -> EncodedTensor:
    data = enc.data.copy()
    data[at:at + len(raw)] = np.frombuffer(raw, np.uint8)
    return tampered(enc, data=data)


def _u32(v: int) -> bytes:
    return int(v % 2**32).to_bytes(4, "little")


@pytest.mark.parametrize("name", ["bf16-huffman", "bf16-rans"])
def test_hostile_lengths(name: str) -> None:
    t, enc = base(name)
    sec = _sections(enc, spec.HUFFMAN if "huffman" in name else spec.RANS)[0]
    at = sec.fields["length"][0]
    for v in (0, 1, 2**31 - 1, 2**31, 2**32 - 1, sec.end - at + 10**6):
        for verify in (True, False):
            assert outcome(_put(enc, at, _u32(v)), t, verify) == "raised", f"{name}: length {v}"


def test_hostile_huffman_tables() -> None:
    t, enc = base("bf16-huffman")
    sec = _sections(enc, spec.HUFFMAN)[0]
    bm, _ = sec.fields["bitmap"]
    cl, ncl = sec.fields["code_lengths"]
    sl, _ = sec.fields["stream_lengths"]
    lengths = np.stack([enc.data[cl:cl + ncl] & 15, enc.data[cl:cl + ncl] >> 4], 1).reshape(-1)
    k = int(np.unpackbits(enc.data[bm:bm + 32]).sum())
    lengths = lengths[:k].astype(np.int64)
    s0, s1, s2 = (int(v) for v in enc.data[sl:sl + 12].view("<u4"))

    def with_lengths(ls: np.ndarray) -> EncodedTensor:
        ls = np.concatenate([ls, [0] * (len(ls) % 2)]).astype(np.uint8)
        return _put(enc, cl, bytes(ls[0::2] | (ls[1::2] << 4)))

    longest, shortest = int(np.argmax(lengths)), int(np.argmin(lengths))
    cases = {
        "all zero bitmap": _put(enc, bm, bytes(32)),
        "one-symbol bitmap": _put(enc, bm, bytes([1]) + bytes(31)),
        "all-ones bitmap": _put(enc, bm, bytes([255]) * 32),
        "all lengths 1": with_lengths(np.ones(k, np.int64)),
        "a zero length": with_lengths(np.where(np.arange(k) == 0, 0, lengths)),
        "length 12..15": with_lengths(np.where(np.arange(k) == longest, 15, lengths)),
        "incomplete code": with_lengths(lengths + (np.arange(k) == longest) * (lengths[longest] < 11)),
        "oversubscribed": with_lengths(lengths - (np.arange(k) == shortest)),
        "stream sizes wrap 2**32": _put(enc, sl, _u32(s0 + 2**31) + _u32(s1 + 2**31) + _u32(s2)),
        "stream 0 huge": _put(enc, sl, _u32(2**32 - 1) + _u32(s1) + _u32(s2)),
        "streams shifted": _put(enc, sl, _u32(s0 + 1) + _u32(s1 - 1) + _u32(s2)),
        "all in stream 3": _put(enc, sl, bytes(12)),
    }
    for what, bad in cases.items():
        for verify in (True, False):
            assert outcome(bad, t, verify) == "raised", f"huffman {what} (verify={verify})"


def test_hostile_rans_tables() -> None:
    t, enc = base("bf16-rans")
    sec = _sections(enc, spec.RANS)[0]
    fr, nfr = sec.fields["freqs"]
    st_, _ = sec.fields["states"]
    freq = enc.data[fr:fr + nfr].view("<u2").astype(np.int64)
    big = int(np.argmax(freq))

    def with_freq(f: np.ndarray) -> EncodedTensor:
        return _put(enc, fr, f.astype("<u2").tobytes())

    zero_one = freq.copy()
    zero_one[big] += zero_one[(big + 1) % freq.size]
    zero_one[(big + 1) % freq.size] = 0
    cases = {
        "sum 4097": with_freq(freq + (np.arange(freq.size) == big)),
        "sum 4095": with_freq(freq - (np.arange(freq.size) == big)),
        "a zero freq, sum 4096": with_freq(zero_one),
        "one freq 65535": with_freq(np.where(np.arange(freq.size) == big, 65535, freq)),
        "states zero": _put(enc, st_, bytes(16)),
        "states max": _put(enc, st_, bytes([255]) * 16),
        "states 2**16": _put(enc, st_, _u32(2**16) * 4),
        "states below 2**16": _put(enc, st_, _u32(5) * 4),
    }
    for what, bad in cases.items():
        assert outcome(bad, t, verify=True) == "raised", f"rans {what}"
        assert outcome(bad, t, verify=False) in ("raised", "different"), f"rans {what}"


@pytest.mark.parametrize("mode", [4, 5, 127, 255])
def test_unknown_mode_bytes(mode: int) -> None:
    t, enc = base("fp16-mixed-huffman")
    for blk in spec.parse(enc.header, enc.data, enc.index):
        for sec in blk:
            for verify in (True, False):
                assert outcome(_put(enc, sec.start, bytes([mode])), t, verify) == "raised"
