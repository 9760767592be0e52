"""Structure-aware mutation of one encoded tensor: header JSON, block index, data sections."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .mutate_bytes import INTERESTING_INTS, absurd_value, dumps, mutate_bytes, mutate_json_bytes
from .seeds import CodecSeed

HEADER_FIELDS = ("format", "version", "dtype", "shape", "coder", "block_size", "checksum")
DTYPE_NAMES = ("bfloat16", "float16", "float32", "float8_e4m3fn", "float8_e5m2", "float64", "int8", "uint8",
               "int16", "int32", "int64", "bool", "complex64", "float", "")


@dataclass
class CodecInput:
    seed: int        # index into codec_seeds()
    header: bytes
    data: bytes
    index: bytes     # raw bytes; read as little-endian int64 (a length not a multiple of 8 is cut)
    what: str        # the mutation, one line


def _header_field(h: dict, rng: np.random.Generator) -> tuple[dict, str]:
    h = dict(h)
    key = str(rng.choice(HEADER_FIELDS))
    r = rng.random()
    if key == "dtype" and r < 0.5:
        h[key] = str(rng.choice(DTYPE_NAMES))
    elif key == "shape" and r < 0.6 and isinstance(h.get("shape"), list) and \
            all(isinstance(d, int) and not isinstance(d, bool) for d in h["shape"]):
        shape = list(h["shape"])
        choice = int(rng.integers(6))
        if choice == 0:
            shape = shape[::-1]
        elif choice == 1:
            shape = shape + [1]
        elif choice == 2:
            shape = [int(np.prod(shape))]
        elif choice == 3 and shape:
            shape[int(rng.integers(len(shape)))] = int(rng.choice(INTERESTING_INTS)) * int(rng.choice([1, -1]))
        elif choice == 4:
            shape = [2**20, 2**20, 2**20]
        else:
            shape = [shape[0] + 1] + shape[1:] if shape else [1]
        h[key] = shape
    elif key == "version" and r < 0.5:
        h[key] = int(rng.choice([0, 1, 2, 3, 4, 5, -3, 2**63]))
    elif key == "coder" and r < 0.5:
        h[key] = str(rng.choice(["huffman", "rans", "rans-ctx", "rans-scale", "raw", "zstd", "RANS"]))
    elif key == "block_size" and r < 0.6:
        h[key] = int(rng.choice([0, 64, 128, 256, 320, 512, 1024, 2**24, 2**24 + 64, 2**30, -256]))
    elif key == "checksum" and r < 0.5:
        c = str(h.get("checksum", "0" * 16)) or "0"
        h[key] = str(rng.choice([c[::-1], c.upper(), c[:15], c + "0", "0" * 16, "g" * 16, "+" + c[1:]]))
    elif r < 0.15:
        h.pop(key, None)
        return h, f"header: delete {key}"
    else:
        h[key] = absurd_value(rng, h.get(key))
    return h, f"header: {key} -> {str(h.get(key))[:60]}"


def mutate_header(raw: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    r = rng.random()
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        parsed = None
    if r < 0.6 and isinstance(parsed, dict):
        h, what = _header_field(parsed, rng)
        return dumps(h), what
    if r < 0.7:
        return raw.replace(b"{", b"{\xc3\x28", 1) if rng.random() < 0.5 else b"\xef\xbb\xbf" + raw, "header: non-utf8/bom"
    if r < 0.75:
        depth = int(rng.choice([100, 10000, 200000]))
        return raw[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}", f"header: nesting {depth}"
    new, what = mutate_json_bytes(raw, rng)
    return new, f"header: {what}"


def mutate_index(raw: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    idx = np.frombuffer(raw[: len(raw) // 8 * 8], "<i8").copy()
    n = idx.shape[0]
    op = int(rng.integers(9))
    i = int(rng.integers(n)) if n else 0
    if op == 0 and n:
        idx[i] = -int(rng.choice([1, 2, 8, 2**40, 2**63]) % 2**63) or -1
        what = "negative"
    elif op == 1 and n:
        idx[i] = int(rng.choice([2**31, 2**32 + 1, 2**62, 2**63 - 1, idx[-1] + 1, idx[-1] * 2]))
        what = "huge"
    elif op == 2 and n > 2:
        j = int(rng.integers(n))
        idx[i], idx[j] = idx[j], idx[i]
        what = "unsorted"
    elif op == 3:
        idx = idx[: int(rng.integers(n + 1))]
        what = "truncated"
    elif op == 4:
        idx = np.concatenate([idx, idx[-1:] if n else idx, idx[-1:] + int(rng.integers(1, 9)) if n else idx])
        what = "extra entries"
    elif op == 5 and n:
        idx[i] += int(rng.choice([-2, -1, 1, 2, 7]))
        what = "off by a few"
    elif op == 6 and n:
        idx[:] = idx[0]
        what = "all equal"
    elif op == 7:
        return raw[: int(rng.integers(len(raw) + 1))] + rng.bytes(int(rng.integers(0, 8))), "index: ragged bytes"
    else:
        new, what = mutate_bytes(raw, rng)
        return new, f"index: bytes {what}"
    return idx.astype("<i8").tobytes(), f"index: {what} at {i}"


def _section_starts(seed: CodecSeed) -> list[int]:
    return [int(v) for v in np.frombuffer(seed.index, "<i8")[:-1]]


def _mode5_field(raw: bytes, starts: list[int], rng: np.random.Generator) -> tuple[bytes, str] | None:
    """A field of a mode-5 section (docs/format.md): its ref byte, the model's k/column byte, its row
    length L, the column list's order byte, or the block's row-list order byte and first code."""
    ats = [a for a in starts if a + 6 < len(raw) and raw[a] == 5]
    if not ats:
        return None
    at = int(rng.choice(ats))
    out = bytearray(raw)
    ref_at = at + 5
    field = int(rng.integers(5))
    if field == 0:  # ref: out of the group, to itself, to a non-mode-5 block; short-state flags
        out[ref_at] = int(rng.choice([1, 2, 15, 0x10, 0xF0, 0x1F])) | (out[ref_at] & 0xF0 if rng.random() < 0.5 else 0)
        what = "ref byte"
    elif out[ref_at] & 15 == 0 and ref_at + 6 < len(out):
        if field == 1:  # k | col << 2: reserved bits, col without room for the map
            out[ref_at + 1] = int(rng.choice([3, 4, 7, 8, 0x80, 0xFF]))
            what = "model head"
        elif field == 2:  # L: below 16, above the column-map limit, huge
            value = int(rng.choice([0, 1, 15, 16, 65537, 2**31, 2**32 - 1]))
            out[ref_at + 2 : ref_at + 6] = value.to_bytes(4, "little")
            what = f"model L={value}"
        else:  # order byte of the column list, or a byte of its codes
            out[ref_at + 6 + int(rng.integers(0, 4))] = int(rng.choice([13, 255, 0, 1]))
            what = "value-list byte"
    else:
        out[min(len(out) - 1, ref_at + 1 + int(rng.integers(0, 3)))] = int(rng.choice([13, 0, 255, 0x55]))
        what = "row-list byte"
    return bytes(out), f"data: mode-5 {what} at {at}"


def mutate_data(seed: CodecSeed, rng: np.random.Generator, other: bytes) -> tuple[bytes, str]:
    raw = seed.data
    starts = _section_starts(seed)
    r = rng.random()
    if r < 0.15 and starts:
        hit = _mode5_field(raw, starts, rng)
        if hit is not None:
            return hit
    if r < 0.2 and starts:
        at = int(rng.choice(starts))
        out = bytearray(raw)
        if at < len(out):
            out[at] = int(rng.integers(0, 8)) if rng.random() < 0.8 else int(rng.integers(256))
        return bytes(out), f"data: mode byte at {at}"
    if r < 0.35 and starts:
        at = int(rng.choice(starts)) + 1
        value = int(rng.choice(INTERESTING_INTS)) % 2**32
        return raw[:at] + value.to_bytes(4, "little")[: max(0, len(raw) - at)] + raw[at + 4:], f"data: length at {at}"
    if r < 0.45:
        a = int(rng.integers(len(raw) + 1))
        return raw[:a] + bytes(int(rng.integers(1, 64))) + raw[a + 64:], "data: zeroed run"
    new, what = mutate_bytes(raw, rng, other)
    return new, f"data: {what}"


def mutate(seeds: list[CodecSeed], k: int, rng: np.random.Generator) -> CodecInput:
    """One mutated input from seed ``k`` (sometimes several mutations stacked)."""
    seed = seeds[k]
    header, data, index = seed.header, seed.data, seed.index
    whats: list[str] = []
    for _ in range(1 if rng.random() < 0.8 else int(rng.integers(2, 4))):
        part = rng.random()
        if part < 0.35:
            header, what = mutate_header(header, rng)
        elif part < 0.55:
            index, what = mutate_index(index, rng)
        else:
            other = seeds[int(rng.integers(len(seeds)))].data
            data, what = mutate_data(seed, rng, other)
        whats.append(what)
    return CodecInput(k, header, data, index, "; ".join(whats))
