"""huffman.build_tables (the decoder's lookup tables) against a plain-Python construction from
docs/format.md: canonical codes, LSB-first streams, greedy runs of whole codes in an 11-bit window."""

from __future__ import annotations

import numpy as np
import pytest

from llmcomp_hf.codec import huffman

WINDOW = 11
RUN_MAX = 5


def _complete_lengths(rng: np.random.Generator, k: int) -> dict[int, int]:
    """Code lengths (1..11) of ``k`` random symbols forming a complete prefix code (Kraft sum 1)."""
    lengths = [1, 1]  # split leaves until there are k of them, never deeper than 11
    while len(lengths) < k:
        i = int(rng.choice([j for j, ln in enumerate(lengths) if ln < WINDOW]))
        lengths[i] += 1
        lengths.append(lengths[i])
    syms = rng.choice(256, size=k, replace=False)
    return {int(s): ln for s, ln in zip(syms, lengths)}


def _payload(lengths: dict[int, int]) -> np.ndarray:
    bitmap = bytearray(32)
    for s in lengths:
        bitmap[s >> 3] |= 1 << (s & 7)
    nibbles = [lengths[s] for s in sorted(lengths)]
    packed = bytes((nibbles[i] | (nibbles[i + 1] << 4 if i + 1 < len(nibbles) else 0)) for i in range(0, len(nibbles), 2))
    return np.frombuffer(bytes(bitmap) + packed + bytes(16), np.uint8).copy()


def _expected(lengths: dict[int, int]) -> tuple[list[int], list[int]]:
    """(single, multi) by decoding every window bit by bit."""
    codes, code, prev = {}, 0, 0
    for s, ln in sorted(lengths.items(), key=lambda item: (item[1], item[0])):
        code <<= ln - prev
        codes[(ln, code)] = s
        code, prev = code + 1, ln
    single, multi = [], []
    for w in range(1 << WINDOW):
        syms, lens, at = [], [], 0
        while len(syms) < RUN_MAX:
            code, ln, found = 0, 0, None
            while at + ln < WINDOW and found is None:
                code = (code << 1) | ((w >> (at + ln)) & 1)  # the stream's next bit: the code's next bit
                ln += 1
                found = codes.get((ln, code))
            if found is None:
                break
            syms.append(found)
            lens.append(ln)
            at += ln
        single.append(syms[0] | lens[0] << 8)
        multi.append(sum(lens) | sum(s << (8 * (i + 1)) for i, s in enumerate(syms)) | len(syms) << 61)
    return single, multi


@pytest.mark.parametrize("seed", range(12))
def test_tables_match_a_bit_by_bit_construction(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = [2, 3, 5, 18, 40, 256][seed % 6] if seed < 6 else int(rng.integers(2, 200))
    lengths = _complete_lengths(rng, k)
    payload = _payload(lengths)
    single = np.zeros(huffman.LUT_SIZE, np.uint16)
    multi = np.zeros(huffman.MULTI_SIZE, np.uint64)
    end = huffman.build_tables(payload, 0, payload.size, single, multi)
    assert end == 32 + (k + 1) // 2
    want_single, want_multi = _expected(lengths)
    assert single.tolist() == want_single
    assert multi.tolist() == want_multi
