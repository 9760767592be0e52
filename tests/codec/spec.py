"""An independent, slow decoder of docs/format.md part 1, used as an oracle in the tests.

It is written from the spec text alone (not from llmcomp_hf.codec) and is strict: it checks
every MUST of the spec (complete Huffman codes, zero padding bits, exact stream lengths, rANS
lanes back at 2**16, sections filling their block exactly) and raises SpecViolation otherwise.
``parse`` also returns where each field of each section lies, for targeted corruption tests.
Small inputs only: the entropy decoders are Python loops.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from .helpers import DTYPES

from . import spec_scale

RAW, CONST, HUFFMAN, RANS, RANS_CTX, RANS_SCALE = 0, 1, 2, 3, 4, 5
MODE_NAMES = {RAW: "raw", CONST: "const", HUFFMAN: "huffman", RANS: "rans", RANS_CTX: "rans_ctx", RANS_SCALE: "rans_scale"}
FLOATS = ("bfloat16", "float16", "float32")
HEADER_KEYS = {"format", "version", "dtype", "shape", "coder", "block_size", "checksum"}


class SpecViolation(AssertionError):
    """The encoded bytes do not follow docs/format.md."""


@dataclass
class Section:
    """One plane section of one block; ``fields`` maps a field name to (offset, length) in data."""

    block: int
    plane: int
    mode: int
    start: int
    end: int
    n: int
    fields: dict[str, tuple[int, int]] = field(default_factory=dict)
    symbols: np.ndarray | None = None  # decoded plane (uint8[n])
    tables: tuple[int, np.ndarray] | None = None  # mode 4 with ref 0: (k, freq[2**k, 256])


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise SpecViolation(msg)


# ---------------------------------------------------------------------------------------------
# Planes and checksum
# ---------------------------------------------------------------------------------------------

def split_planes(w: np.ndarray, dtype: str) -> list[np.ndarray]:
    """Element bit patterns -> byte planes, per the table in docs/format.md."""
    w = w.astype(np.uint64)
    if dtype in ("bfloat16", "float16"):
        return [((w >> 7) & 0xFF).astype(np.uint8), (((w >> 8) & 0x80) | (w & 0x7F)).astype(np.uint8)]
    if dtype == "float32":
        return [((w >> 23) & 0xFF).astype(np.uint8), (((w >> 24) & 0x80) | ((w >> 16) & 0x7F)).astype(np.uint8),
                ((w >> 8) & 0xFF).astype(np.uint8), (w & 0xFF).astype(np.uint8)]
    return [((w >> np.uint64(8 * j)) & 0xFF).astype(np.uint8) for j in range(DTYPES[dtype].itemsize)]


def merge_planes(planes: list[np.ndarray], dtype: str) -> np.ndarray:
    """Inverse of split_planes: byte planes -> element bit patterns (numpy unsigned)."""
    p = [x.astype(np.uint64) for x in planes]
    if dtype in ("bfloat16", "float16"):
        w = ((p[1] & 0x80) << 8) | (p[0] << 7) | (p[1] & 0x7F)
    elif dtype == "float32":
        w = ((p[1] & 0x80) << 24) | (p[0] << 23) | ((p[1] & 0x7F) << 16) | (p[2] << 8) | p[3]
    else:
        w = np.zeros_like(p[0])
        for j, x in enumerate(p):
            w |= x << np.uint64(8 * j)
    return w.astype(DTYPES[dtype].uint)


def sum32(raw: np.ndarray) -> int:
    """The format's checksum of a byte string (uint8 array)."""
    raw = np.asarray(raw, np.uint8).reshape(-1)
    pad = (-raw.size) % 4
    words = np.concatenate([raw, np.zeros(pad, np.uint8)]).view("<u4").astype(np.uint64)
    i = np.arange(words.size, dtype=np.uint64)
    m32 = np.uint64(0xFFFFFFFF)
    h = words ^ ((i * np.uint64(0x9E3779B9)) & m32)  # murmur3 fmix32 of (word XOR position key)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & m32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & m32
    h ^= h >> np.uint64(16)
    return int(h.sum(dtype=np.uint64)) % (1 << 64)  # h < 2**32, so the uint64 sum wraps exactly mod 2**64


def header_term(header: dict) -> int:
    """Version 3: BLAKE2b-64 (little-endian) of ``llmcomp.tensor;dtype=D;shape=d0,d1;nbytes=N``; else 0."""
    if header["version"] < 3:
        return 0
    shape = header["shape"]
    nbytes = math.prod(shape) * DTYPES[header["dtype"]].itemsize
    text = f"llmcomp.tensor;dtype={header['dtype']};shape={','.join(str(d) for d in shape)};nbytes={nbytes}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def checksum(header: dict, raw: np.ndarray) -> int:
    """The header's ``checksum`` value for original bytes ``raw``: sum32, plus the header term from version 3."""
    return (sum32(raw) + header_term(header)) % (1 << 64)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

class _Reader:
    def __init__(self, data: np.ndarray, pos: int, end: int, where: str):
        self.data, self.pos, self.end, self.where = data, pos, end, where

    def take(self, n: int) -> tuple[int, np.ndarray]:
        _check(n >= 0 and self.pos + n <= self.end, f"{self.where}: read of {n} bytes at {self.pos} past end {self.end}")
        at = self.pos
        self.pos += n
        return at, self.data[at:at + n]

    def u32(self) -> tuple[int, int]:
        at, b = self.take(4)
        return at, int(b.view("<u4")[0])


def _bitmap_symbols(bitmap: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.unpackbits(bitmap, bitorder="little")).astype(np.int64)


def _decode_huffman(payload: _Reader, n: int, sec: Section) -> np.ndarray:
    w = payload.where
    at, bitmap = payload.take(32)
    sec.fields["bitmap"] = (at, 32)
    sym = _bitmap_symbols(bitmap)
    k = sym.size
    _check(k >= 2, f"{w}: coded section with k={k} < 2 symbols")
    at, nib = payload.take((k + 1) // 2)
    sec.fields["code_lengths"] = (at, (k + 1) // 2)
    lengths = np.stack([nib & 0x0F, nib >> 4], axis=1).reshape(-1)[:k].astype(np.int64)
    if k % 2:
        _check(int(nib[-1]) >> 4 == 0, f"{w}: unused high nibble of the code lengths is not zero")
    _check(bool(np.all((lengths >= 1) & (lengths <= 11))), f"{w}: code length outside 1..11: {lengths.tolist()}")
    _check(sum(2 ** (11 - int(x)) for x in lengths) == 2 ** 11, f"{w}: Kraft sum != 1 for lengths {lengths.tolist()}")
    # Canonical codes: sorted by (length, symbol); first code 0; next = (prev+1) << (len - prev_len).
    table: dict[tuple[int, int], int] = {}
    order = sorted(range(k), key=lambda i: (lengths[i], sym[i]))
    code, prev_len = -1, int(lengths[order[0]])
    for j, i in enumerate(order):
        ln = int(lengths[i])
        code = 0 if j == 0 else (code + 1) << (ln - prev_len)
        prev_len = ln
        table[(ln, code)] = int(sym[i])
    at0 = payload.pos
    sizes = [payload.u32()[1] for _ in range(3)]
    sec.fields["stream_lengths"] = (at0, 12)
    sizes.append(payload.end - payload.pos - sum(sizes))
    _check(min(sizes) >= 0, f"{w}: stream lengths {sizes[:3]} exceed the payload")
    q = -(-n // 4)
    out = np.empty(n, np.uint8)
    for j in range(4):
        at, stream = payload.take(sizes[j])
        sec.fields[f"stream{j}"] = (at, sizes[j])
        lo, hi = min(j * q, n), min((j + 1) * q, n)
        bitv = np.unpackbits(stream, bitorder="little")
        p = 0
        for i in range(lo, hi):
            c, ln = 0, 0
            while True:
                _check(p < bitv.size and ln < 11, f"{w}: stream {j} runs out of bits or has no code at symbol {i}")
                c = (c << 1) | int(bitv[p])
                p += 1
                ln += 1
                if (ln, c) in table:
                    out[i] = table[(ln, c)]
                    break
        _check(sizes[j] == -(-p // 8), f"{w}: stream {j} is {sizes[j]} bytes for {p} bits")
        _check(not bitv[p:].any(), f"{w}: stream {j} has nonzero padding bits")
    return out


def _decode_rans(payload: _Reader, n: int, sec: Section) -> np.ndarray:
    w = payload.where
    at, bitmap = payload.take(32)
    sec.fields["bitmap"] = (at, 32)
    sym = _bitmap_symbols(bitmap)
    k = sym.size
    _check(k >= 2, f"{w}: coded section with k={k} < 2 symbols")
    at, fb = payload.take(2 * k)
    sec.fields["freqs"] = (at, 2 * k)
    freq = fb.view("<u2").astype(np.int64)
    _check(bool(np.all(freq >= 1)) and int(freq.sum()) == 4096, f"{w}: rANS frequencies {freq.tolist()} (sum {int(freq.sum())})")
    cum = np.concatenate([[0], np.cumsum(freq)])
    at, sb = payload.take(16)
    sec.fields["states"] = (at, 16)
    x = [int(v) for v in sb.view("<u4")]
    rest = payload.end - payload.pos
    _check(rest % 2 == 0, f"{w}: rANS word stream has odd length {rest}")
    at, wb = payload.take(rest)
    sec.fields["words"] = (at, rest)
    words = wb.view("<u2").astype(np.int64)
    nxt = 0
    out = np.empty(n, np.uint8)
    for i in range(n):
        lane = i & 3
        slot = x[lane] & 4095
        s = int(np.searchsorted(cum, slot, side="right")) - 1
        out[i] = sym[s]
        x[lane] = int(freq[s]) * (x[lane] >> 12) + slot - int(cum[s])
        if x[lane] < 1 << 16:
            _check(nxt < words.size, f"{w}: rANS word stream exhausted at symbol {i}")
            x[lane] = ((x[lane] << 16) | int(words[nxt])) & 0xFFFFFFFF
            nxt += 1
    _check(all(v == 1 << 16 for v in x), f"{w}: final rANS lane states {x} != 2**16")
    _check(nxt == words.size, f"{w}: {words.size - nxt} rANS words left over")
    return out


def _exp_golomb(bitv: np.ndarray, p: int, r: int, w: str) -> tuple[int, int]:
    """Order-r exp-Golomb value at bit p: z zero bits, then z+1 bits u (MSB first), then r bits."""
    z = 0
    while True:
        _check(p < bitv.size, f"{w}: mode-4 tables run past their section")
        if bitv[p]:
            break
        z += 1
        p += 1
        _check(z <= 13, f"{w}: mode-4 table code with more than 13 leading zeros")
    _check(p + z + 1 + r <= bitv.size, f"{w}: mode-4 tables run past their section")
    v = 0
    for bit in bitv[p:p + z + 1 + r]:
        v = (v << 1) | int(bit)
    return v - (1 << r), p + z + 1 + r


def _ctx_tables(payload: _Reader, sec: Section, extra: int = 0) -> tuple[int, np.ndarray]:
    """Mode-4 tables: k | skip << 2, first symbol, count-1, orders (r0 | r1 << 4), then the bit-packed
    codes of every frequency except those at position ``skip`` (4096 minus the others); 2**k tables,
    mode 5's 4 * 2**k (``extra`` = 2)."""
    w = payload.where
    at, head = payload.take(4)
    sec.fields["ctx_head"] = (at, 4)
    k, skip, lo, m = int(head[0]) & 3, int(head[0]) >> 2, int(head[1]), int(head[2]) + 1
    r0, r1 = int(head[3]) & 15, int(head[3]) >> 4
    _check(skip < m and lo + m <= 256 and r0 <= 12 and r1 <= 12 and (k + extra > 0 or r1 == 0), f"{w}: mode-4 table head {head.tolist()}")
    bitv = np.unpackbits(payload.data[payload.pos:payload.end], bitorder="little")
    freq = np.zeros((1 << (k + extra), 256), np.int64)
    p = 0
    for c in range(1 << (k + extra)):
        for j in range(m):
            if j == skip:
                continue
            v, p = _exp_golomb(bitv, p, r0 if c == 0 else r1, w)
            freq[c, lo + j] = v if c == 0 else freq[c - 1, lo + j] + (v // 2 if v % 2 == 0 else -(v + 1) // 2)
            _check(0 <= freq[c, lo + j] < 4096, f"{w}: mode-4 frequency {int(freq[c, lo + j])} of context {c}")
        freq[c, lo + skip] = 4096 - int(freq[c].sum())
        _check(0 <= freq[c, lo + skip] < 4096, f"{w}: mode-4 context {c}: implied frequency {int(freq[c, lo + skip])}")
    nbytes = -(-p // 8)
    _check(not bitv[p:8 * nbytes].any(), f"{w}: mode-4 table padding bits are not zero")
    at, _ = payload.take(nbytes)
    sec.fields["ctx_codes"] = (at, nbytes)
    return k, freq


def _decode_rans_ctx(payload: _Reader, n: int, sec: Section, tables: tuple[int, np.ndarray], ctx_plane: np.ndarray,
                    short: int) -> np.ndarray:
    """Mode 4 after its ref byte (and tables): mode 3's decoder with the table of each element's context.

    Lane ``j``'s state takes 3 bytes when bit ``j`` of ``short`` (the ref byte's high nibble) is set,
    else 4 bytes and then it must be >= 2**24."""
    w = payload.where
    k, freq = tables
    cum = np.concatenate([np.zeros((freq.shape[0], 1), np.int64), np.cumsum(freq, axis=1)], axis=1)
    sizes = [3 if short >> j & 1 else 4 for j in range(4)]
    at, sb = payload.take(sum(sizes))
    sec.fields["states"] = (at, sum(sizes))
    offs = np.cumsum([0] + sizes)
    x = [int.from_bytes(sb[offs[j]:offs[j + 1]].tobytes(), "little") for j in range(4)]
    for j in range(4):
        _check(x[j] >= 1 << (16 if sizes[j] == 3 else 24), f"{w}: lane {j} state {x[j]} in {sizes[j]} bytes")
    rest = payload.end - payload.pos
    _check(rest % 2 == 0, f"{w}: rANS word stream has odd length {rest}")
    at, wb = payload.take(rest)
    sec.fields["words"] = (at, rest)
    words = wb.view("<u2").astype(np.int64)
    nxt = 0
    out = np.empty(n, np.uint8)
    for i in range(n):
        lane, c = i & 3, (int(ctx_plane[i]) >> (7 - k)) & ((1 << k) - 1)
        slot = x[lane] & 4095
        s = int(np.searchsorted(cum[c], slot, side="right")) - 1
        out[i] = s
        x[lane] = int(freq[c, s]) * (x[lane] >> 12) + slot - int(cum[c, s])
        if x[lane] < 1 << 16:
            _check(nxt < words.size, f"{w}: rANS word stream exhausted at symbol {i}")
            x[lane] = ((x[lane] << 16) | int(words[nxt])) & 0xFFFFFFFF
            nxt += 1
    _check(all(v == 1 << 16 for v in x), f"{w}: final rANS lane states {x} != 2**16")
    _check(nxt == words.size, f"{w}: {words.size - nxt} rANS words left over")
    return out


def _read_section(data: np.ndarray, pos: int, block_end: int, b: int, plane: int, n: int,
                  ctx_ok: bool = False, scale_ok: bool = False) -> Section:
    where = f"block {b} plane {plane}"
    r = _Reader(data, pos, block_end, where)
    at, m = r.take(1)
    mode = int(m[0])
    sec = Section(b, plane, mode, pos, pos, n, {"mode": (at, 1)})
    if mode == RAW:
        at, body = r.take(n)
        sec.fields["raw"] = (at, n)
        sec.symbols = body.copy()
    elif mode == CONST:
        at, body = r.take(1)
        sec.fields["value"] = (at, 1)
        sec.symbols = np.full(n, body[0], np.uint8)
    elif mode in (HUFFMAN, RANS):
        at, size = r.u32()
        sec.fields["length"] = (at, 4)
        payload = _Reader(data, r.pos, r.pos + size, where)
        _check(payload.end <= block_end, f"{where}: payload length {size} runs past the block")
        sec.symbols = (_decode_huffman if mode == HUFFMAN else _decode_rans)(payload, n, sec)
        r.pos = payload.end
    elif mode == RANS_SCALE and scale_ok:
        at, size = r.u32()
        sec.fields["length"] = (at, 4)
        payload = _Reader(data, r.pos, r.pos + size, where)
        _check(payload.end <= block_end, f"{where}: payload length {size} runs past the block")
        at, ref = payload.take(1)
        sec.fields["ref"] = (at, 1)
        if int(ref[0]) & 15 == 0:
            sec.tables = spec_scale.model(payload, sec, _check, _exp_golomb, _ctx_tables)  # type: ignore[assignment]
        sec.payload = payload  # type: ignore[attr-defined]
        r.pos = payload.end
    elif mode == RANS_CTX and ctx_ok:
        at, size = r.u32()
        sec.fields["length"] = (at, 4)
        payload = _Reader(data, r.pos, r.pos + size, where)
        _check(payload.end <= block_end, f"{where}: payload length {size} runs past the block")
        at, ref = payload.take(1)
        sec.fields["ref"] = (at, 1)
        if int(ref[0]) & 15 == 0:
            sec.tables = _ctx_tables(payload, sec)
        sec.symbols = None  # decoded by parse() once plane 1 is known
        sec.payload = payload  # type: ignore[attr-defined]
        r.pos = payload.end
    else:
        raise SpecViolation(f"{where}: unknown mode byte {mode}")
    sec.end = r.pos
    return sec


# ---------------------------------------------------------------------------------------------
# Whole tensor
# ---------------------------------------------------------------------------------------------

def check_header(header: dict) -> None:
    _check(set(header) == HEADER_KEYS, f"header keys {sorted(header)} != {sorted(HEADER_KEYS)}")
    _check(header["format"] == "llmcomp.tensor" and header["version"] in (1, 2, 3, 4), f"bad format/version in {header}")
    _check(header["dtype"] in DTYPES and header["coder"] in ("huffman", "rans", "raw", "rans-ctx", "rans-scale"),
           f"bad dtype/coder in {header}")
    _check(header["coder"] != "rans-ctx" or header["version"] >= 2, f"coder rans-ctx needs version 2 or more: {header}")
    _check(header["coder"] != "rans-scale" or header["version"] >= 4, f"coder rans-scale needs version 4: {header}")
    bs = header["block_size"]
    _check(isinstance(bs, int) and 256 <= bs <= 1 << 24 and bs % 64 == 0, f"bad block_size {bs}")
    c = header["checksum"]
    _check(isinstance(c, str) and len(c) == 16 and all(ch in "0123456789abcdefABCDEF" for ch in c), f"bad checksum {c!r}")


def parse(header: dict, data: np.ndarray, index: np.ndarray) -> list[list[Section]]:
    """Every block's sections, each with its decoded plane; raises SpecViolation on any deviation."""
    check_header(header)
    dt = DTYPES[header["dtype"]]
    numel = math.prod(header["shape"])
    bs = header["block_size"]
    n_blocks = -(-numel // bs)
    _check(data.dtype == np.uint8 and index.dtype == np.int64, f"array dtypes {data.dtype}, {index.dtype}")
    _check(index.shape == (n_blocks + 1,), f"index has {index.shape} entries, want {n_blocks + 1}")
    _check(int(index[0]) == 0 and int(index[-1]) == data.size and bool(np.all(np.diff(index) >= 0)), "bad index")
    blocks = []
    for b in range(n_blocks):
        n = min(bs, numel - b * bs)
        pos, end = int(index[b]), int(index[b + 1])
        secs = []
        for plane in range(dt.planes):
            # mode 4: version 2, or version 3+ with coder rans-ctx; mode 5: coder rans-scale; plane 0 of a float
            mode4 = header["version"] == 2 or (header["version"] >= 3 and header["coder"] == "rans-ctx")
            ctx_ok = plane == 0 and mode4 and header["dtype"] in FLOATS
            scale_ok = plane == 0 and header["coder"] == "rans-scale" and header["dtype"] in FLOATS
            sec = _read_section(data, pos, end, b, plane, n, ctx_ok, scale_ok)
            secs.append(sec)
            pos = sec.end
        _check(pos == end, f"block {b}: sections end at {pos}, block ends at {end}")
        if secs[0].mode == RANS_CTX:
            ref = int(data[secs[0].fields["ref"][0]]) & 15
            tables = secs[0].tables
            if ref:
                _check(ref <= b % 16, f"block {b}: mode-4 ref {ref} leaves the group of 16 blocks")
                tables = blocks[b - ref][0].tables
                _check(tables is not None, f"block {b}: mode-4 ref {ref} names a block without its own tables")
            short = int(data[secs[0].fields["ref"][0]]) >> 4
            secs[0].symbols = _decode_rans_ctx(secs[0].payload, n, secs[0], tables, secs[1].symbols, short)  # type: ignore[attr-defined]
        if secs[0].mode == RANS_SCALE:
            ref = int(data[secs[0].fields["ref"][0]]) & 15
            mdl = secs[0].tables
            if ref:
                _check(ref <= b % 16, f"block {b}: mode-5 ref {ref} leaves the group of 16 blocks")
                _check(blocks[b - ref][0].mode == RANS_SCALE, f"block {b}: mode-5 ref {ref} names a block without a model")
                mdl = blocks[b - ref][0].tables
                _check(mdl is not None, f"block {b}: mode-5 ref {ref} names a block without a model")
            short = int(data[secs[0].fields["ref"][0]]) >> 4
            secs[0].symbols = spec_scale.decode(secs[0].payload, secs[0], n, b * bs, mdl, secs[1].symbols, short,  # type: ignore[attr-defined]
                                                _check, _exp_golomb)
        blocks.append(secs)
    return blocks


def decode(header: dict, data: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Decode to the element bit patterns (flat numpy unsigned array) and check the checksum."""
    dtype = header["dtype"]
    blocks = parse(header, data, index)
    planes = [np.concatenate([blk[p].symbols for blk in blocks]) if blocks else np.zeros(0, np.uint8)
              for p in range(DTYPES[dtype].planes)]
    w = merge_planes(planes, dtype)
    _check(checksum(header, w.view(np.uint8)) == int(header["checksum"], 16), "checksum mismatch")
    return w


def modes(header: dict, data: np.ndarray, index: np.ndarray) -> list[list[int]]:
    """The mode byte of every section, [block][plane]."""
    return [[s.mode for s in blk] for blk in parse(header, data, index)]
