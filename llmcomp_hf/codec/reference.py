"""Pure numpy/Python reference of the codec: slow, small, written straight from docs/format.md.

Used by the tests to cross-check the numba kernels in both directions (reference-encoded bytes
decode with the kernels and vice versa; both encoders emit identical bytes). Entropy *models*
(code lengths, frequencies) come from models.py, run as plain Python via ``.py_func``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from llmcomp_hf.codec import models, rans_ctx
from llmcomp_hf.codec import reference_scale as scale
from llmcomp_hf.codec.api import DEFAULT_BLOCK_SIZE, DEFAULT_MIN_GAIN, _raw_bytes, torch_dtype
from llmcomp_hf.codec.blocks import GROUP
from llmcomp_hf.coders import MODE_RANS_SCALE, context_modes_allowed
from llmcomp_hf.coders import coder as coder_entry
from llmcomp_hf.codec.encoded import DTYPES, FORMAT_NAME, EncodedTensor, checksum_of, format_version, mode4_allowed
from llmcomp_hf.codec.planes import layout_of
from llmcomp_hf.codec.scale_blocks import scale_maps
from llmcomp_hf.errors import ChecksumMismatchError, CorruptStreamError

_M32 = 0xFFFFFFFF


def split_planes(u8: np.ndarray, dtype: str) -> np.ndarray:
    """Planes [P, numel] of a tensor's raw bytes (docs/format.md, "Planes")."""
    if dtype in ("bfloat16", "float16"):
        w = u8.view(np.uint16).astype(np.uint32)
        return np.stack([(w >> 7) & 0xFF, ((w >> 8) & 0x80) | (w & 0x7F)]).astype(np.uint8)
    if dtype == "float32":
        w = u8.view(np.uint32)
        return np.stack([(w >> 23) & 0xFF, ((w >> 24) & 0x80) | ((w >> 16) & 0x7F), (w >> 8) & 0xFF, w & 0xFF]).astype(np.uint8)
    itemsize = DTYPES[dtype][0]
    return np.ascontiguousarray(u8.reshape(-1, itemsize).T)


def merge_planes(planes: np.ndarray, dtype: str) -> np.ndarray:
    """Raw bytes from planes; inverse of split_planes."""
    p = planes.astype(np.uint32)
    if dtype in ("bfloat16", "float16"):
        return ((p[0] << 7) | ((p[1] & 0x80) << 8) | (p[1] & 0x7F)).astype(np.uint16).view(np.uint8)
    if dtype == "float32":
        w = (p[0] << 23) | ((p[1] & 0x80) << 24) | ((p[1] & 0x7F) << 16) | (p[2] << 8) | p[3]
        return w.astype(np.uint32).view(np.uint8)
    return np.ascontiguousarray(planes.T).reshape(-1)


def checksum(u8: np.ndarray) -> int:
    """sum32 of docs/format.md with Python integers."""
    padded = np.zeros(-(-u8.size // 4) * 4, np.uint8)
    padded[: u8.size] = u8
    words = padded.view(np.uint32).astype(np.uint64)
    i = np.arange(words.size, dtype=np.uint64)
    h = words ^ ((i * 0x9E3779B9) & _M32)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return int(h.sum(dtype=np.uint64))


def _canonical(lengths: np.ndarray) -> dict[int, tuple[int, int]]:
    """symbol -> (code, length), canonical order (length, symbol)."""
    table, code, prev = {}, 0, 0
    for s in sorted((s for s in range(256) if lengths[s]), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        prev = int(lengths[s])
        table[s] = (code, prev)
        code += 1
    return table


def _bitmap(present: np.ndarray) -> bytes:
    return bytes(sum(1 << t for t in range(8) if present[8 * b + t]) for b in range(32))


def _huffman_payload(plane: np.ndarray, lengths: np.ndarray) -> bytes:
    syms = [s for s in range(256) if lengths[s]]
    nib = bytearray((len(syms) + 1) // 2)
    for j, s in enumerate(syms):
        nib[j >> 1] |= int(lengths[s]) << (4 * (j & 1))
    codes = _canonical(lengths)
    q = -(-plane.size // 4)
    streams = []
    for st in range(4):
        acc, nbits = 0, 0
        for s in plane[st * q : (st + 1) * q]:
            code, ln = codes[int(s)]
            for bit in range(ln - 1, -1, -1):  # MSB of the code first, packed LSB-first
                acc |= ((code >> bit) & 1) << nbits
                nbits += 1
        streams.append(acc.to_bytes((nbits + 7) // 8, "little"))
    sizes = b"".join(len(s).to_bytes(4, "little") for s in streams[:3])
    return _bitmap(lengths > 0) + bytes(nib) + sizes + b"".join(streams)


def _rans_payload(plane: np.ndarray, counts: np.ndarray) -> bytes:
    freq = models.rans_frequencies.py_func(counts, plane.size)
    cum = np.concatenate([[0], np.cumsum(freq)[:-1]])
    x, words = [1 << 16] * 4, []
    for i in range(plane.size - 1, -1, -1):
        s, lane = int(plane[i]), i & 3
        f = int(freq[s])
        if x[lane] >= f << 20:
            words.append(x[lane] & 0xFFFF)
            x[lane] >>= 16
        x[lane] = ((x[lane] // f) << 12) + x[lane] % f + int(cum[s])
    head = _bitmap(counts > 0) + b"".join(int(freq[s]).to_bytes(2, "little") for s in range(256) if counts[s])
    return head + b"".join(v.to_bytes(4, "little") for v in x) + b"".join(w.to_bytes(2, "little") for w in reversed(words))


def _section(plane: np.ndarray, coder: str, keep_num: int, prev: dict[str, Any]) -> bytes:
    counts = np.bincount(plane, minlength=256).astype(np.int64)
    if np.count_nonzero(counts) == 1:
        return bytes([1, int(plane[0])])
    max_payload = plane.size * keep_num // 1024
    if coder == "huffman":
        own = models.huffman_lengths(counts)
        lengths, bits = own, int((counts * own).sum())
        if prev.get("lengths") is not None:
            old = prev["lengths"]
            if not np.any((counts > 0) & (old == 0)):
                old_bits = int((counts * old).sum())
                if old_bits <= bits + bits // 128:
                    lengths, bits = old, old_bits
        bound = 32 + (int(np.count_nonzero(lengths)) + 1) // 2 + 12 + (bits + 7) // 8 + 4
        if bound < max_payload:
            prev["lengths"] = lengths
            payload = _huffman_payload(plane, lengths)
            return bytes([2]) + len(payload).to_bytes(4, "little") + payload
    elif coder == "rans":
        payload = _rans_payload(plane, counts)
        if len(payload) < max_payload:
            return bytes([3]) + len(payload).to_bytes(4, "little") + payload
    return bytes([0]) + plane.tobytes()


def _eg(v: int, r: int) -> str:
    """Order-r exp-Golomb code of v >= 0 as a bit string (first bit first)."""
    u = (v >> r) + 1
    return "0" * (u.bit_length() - 1) + format(u, "b") + (format(v & ((1 << r) - 1), f"0{r}b") if r else "")


def _zigzag(d: int) -> int:
    return 2 * d if d >= 0 else -2 * d - 1


def _ctx_tables(freq: np.ndarray, k: int, present: np.ndarray) -> bytes:
    """Mode-4 tables: k | skip << 2, first symbol, count-1, orders, bit-packed exp-Golomb codes
    (LSB first) of every frequency but those at position ``skip`` (implied by the sum of 4096)."""
    syms = np.flatnonzero(present)
    lo, m = int(syms[0]), int(syms[-1] - syms[0] + 1)
    best = None
    for skip in range(min(m, 64)):
        js = [j for j in range(m) if j != skip]
        vals0 = [int(freq[0, lo + j]) for j in js]
        deltas = [_zigzag(int(freq[c, lo + j] - freq[c - 1, lo + j])) for c in range(1, freq.shape[0]) for j in js]
        r0 = min(range(13), key=lambda r: (sum(len(_eg(v, r)) for v in vals0), r))
        r1 = min(range(13), key=lambda r: (sum(len(_eg(v, r)) for v in deltas), r)) if deltas else 0
        bits = "".join(_eg(v, r0) for v in vals0) + "".join(_eg(v, r1) for v in deltas)
        if best is None or len(bits) < len(best[0]):
            best = (bits, skip, r0, r1)
    bits, skip, r0, r1 = best
    bits += "0" * (-len(bits) % 8)
    codes = bytes(int(bits[i:i + 8][::-1], 2) for i in range(0, len(bits), 8))
    return bytes([k | (skip << 2), lo, m - 1, r0 | (r1 << 4)]) + codes


def _rans_ctx_payload(p0: np.ndarray, p1: np.ndarray, k: int, freq: np.ndarray, ref: int, present: np.ndarray) -> bytes:
    cum = np.concatenate([np.zeros((freq.shape[0], 1), np.int64), np.cumsum(freq, axis=1)[:, :-1]], axis=1)
    x, words = [1 << 16] * 4, []
    for i in range(p0.size - 1, -1, -1):
        s, lane, c = int(p0[i]), i & 3, (int(p1[i]) >> (7 - k)) & ((1 << k) - 1)
        f = int(freq[c, s])
        if x[lane] >= f << 20:
            words.append(x[lane] & 0xFFFF)
            x[lane] >>= 16
        x[lane] = ((x[lane] // f) << 12) + x[lane] % f + int(cum[c, s])
    flags = sum(1 << (4 + j) for j in range(4) if x[j] < 1 << 24)  # these states take 3 bytes
    head = bytes([ref | flags]) + (_ctx_tables(freq, k, present) if ref == 0 else b"")
    states = b"".join(v.to_bytes(3 if v < 1 << 24 else 4, "little") for v in x)
    return head + states + b"".join(w.to_bytes(2, "little") for w in reversed(words))


def _ctx_hist(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Counts of (3-bit context, plane-0 symbol)."""
    h = np.zeros((rans_ctx.N_CTX, 256), np.int64)
    np.add.at(h, ((p1.astype(np.int64) >> 4) & 7, p0.astype(np.int64)), 1)
    return h


def _group_model(hists: list[np.ndarray]) -> tuple[int, np.ndarray, np.ndarray]:
    """The group's (k, tables, present symbols): k minimising estimated bits plus table bytes."""
    total = sum(hists)
    present = total.sum(axis=0)
    if np.count_nonzero(present) < 2:
        return -1, np.zeros((1, 256), np.int64), present
    best = None
    for k in range(rans_ctx.ENCODER_MAX_CTX_BITS + 1):
        counts = rans_ctx.fold.py_func(total, k)
        freq = rans_ctx.tables.py_func(counts, present)
        c = rans_ctx.cost.py_func(counts, freq) + rans_ctx.table_bytes.py_func(freq, present) * 8 * rans_ctx.COST_ONE
        if best is None or c < best[0]:
            best = (c, k, freq)
    return best[1], best[2], present


def _plane0_ctx(p0, p1, hist, gk, gfreq, gpresent, ref, keep_num, b, tabs) -> tuple[bytes, bool, tuple[int, int, np.ndarray] | None]:
    """Plane 0 under rans-ctx: const, mode 3, mode 4 (group tables, own tables or those of an
    earlier block ``tabs[t] = (block, k, freq)`` of the group) or raw, by estimated cost. Returns
    (section, whether it now holds the group tables, the own tables it stores or None)."""
    counts = np.bincount(p0, minlength=256).astype(np.int64)
    m = int(np.count_nonzero(counts))
    if m == 1:
        return bytes([1, int(p0[0])]), False, None
    unit, cost = 8 * rans_ctx.COST_ONE, rans_ctx.COST
    freq3 = models.rans_frequencies.py_func(counts, p0.size)
    best, choice, own, own_k, pick = (5 + 32 + 2 * m + 16) * unit + int((counts * cost[freq3]).sum()), 0, None, gk, None
    if gk >= 0:
        bc = rans_ctx.fold.py_func(hist, gk)
        c = rans_ctx.cost.py_func(bc, gfreq) + (5 + 1 + 16) * unit
        if ref == 0:
            c += rans_ctx.table_bytes.py_func(gfreq, gpresent) * unit
        if c < best:
            best, choice = c, 1
    if gk >= 0 and ref > 0:
        for k in range(rans_ctx.ENCODER_MAX_CTX_BITS + 1):
            ck = rans_ctx.fold.py_func(hist, k)
            fk = rans_ctx.tables.py_func(ck, counts)
            c = rans_ctx.cost.py_func(ck, fk) + (5 + 1 + 16 + rans_ctx.table_bytes.py_func(fk, counts)) * unit
            if c < best:
                best, choice, own, own_k = c, 2, fk, k
    if gk >= 0:
        for t in tabs:
            ck = rans_ctx.fold.py_func(hist, t[1])
            if (t[2][ck > 0] == 0).any():  # a symbol the tables cannot code
                continue
            c = int((ck * cost[t[2]]).sum()) + (5 + 1 + 16) * unit
            if c < best:
                best, choice, pick = c, 3, t
    if choice == 0:
        payload, mode = _rans_payload(p0, counts), 3
    elif choice == 1:
        payload, mode = _rans_ctx_payload(p0, p1, gk, gfreq, ref, gpresent), 4
    elif choice == 2:
        payload, mode = _rans_ctx_payload(p0, p1, own_k, own, 0, counts), 4
    else:
        payload, mode = _rans_ctx_payload(p0, p1, pick[1], pick[2], b - pick[0], counts), 4
    if len(payload) < p0.size * keep_num // 1024:
        section = bytes([mode]) + len(payload).to_bytes(4, "little") + payload
        return section, choice == 1 and ref == 0, (b, own_k, own) if choice == 2 else None
    return bytes([0]) + p0.tobytes(), False, None


def encode_reference(tensor: Any, coder: str = "huffman", block_size: int = DEFAULT_BLOCK_SIZE, name: str | None = None, min_gain: float | None = None) -> EncodedTensor:
    """Reference encoder: same bytes as ``encode`` (tiny inputs only: it is pure Python).

    ``rans-scale``: the mode-5 stream and the ``rans-ctx`` one, the smaller kept (the first on a tie),
    as ``encode`` does; a tensor mode 5 does not apply to gets ``rans-ctx``.
    """
    entry = coder_entry(coder)  # the registry names the reference plane coder of each coder
    u8, dtype, shape = _raw_bytes(tensor)
    if entry.reference == "rans-scale":
        fallback = encode_reference(tensor, "rans-ctx", block_size, name, min_gain)
        itemsize = DTYPES[dtype][0]
        words = u8.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[itemsize])
        maps = scale_maps(words, layout_of(dtype, itemsize), shape)
        if not maps[0]:
            return fallback
        planes = split_planes(u8, dtype)
        keep_num = int((1.0 - (DEFAULT_MIN_GAIN[coder] if min_gain is None else min_gain)) * 1024)
        blocks = scale.encode_blocks(planes, math.prod(shape), block_size, keep_num, maps, _section, _ctx_tables)
        enc = _assemble(blocks, u8, dtype, shape, coder, block_size, name)
        return enc if enc.nbytes <= fallback.nbytes else fallback
    planes = split_planes(u8, dtype) if u8.size else np.zeros((DTYPES[dtype][1], 0), np.uint8)
    numel = math.prod(shape)
    keep_num = int((1.0 - (DEFAULT_MIN_GAIN[coder] if min_gain is None else min_gain)) * 1024)
    with_ctx = entry.reference == "rans-ctx" and dtype in ("bfloat16", "float16", "float32")
    plane_coder = "rans" if entry.context_modes else entry.reference  # context coders: other planes as rans
    blocks, prev = [], [dict() for _ in range(planes.shape[0])]
    n_blocks = -(-numel // block_size)
    for b in range(n_blocks):
        if b % GROUP == 0:
            prev = [dict() for _ in range(planes.shape[0])]
            if with_ctx:
                parts = [planes[:, g * block_size:(g + 1) * block_size] for g in range(b, min(b + GROUP, n_blocks))]
                hists = [_ctx_hist(q[0], q[1]) for q in parts]
                gk, gfreq, gpresent = _group_model(hists)
                owner, tabs = -1, []
        part = planes[:, b * block_size : (b + 1) * block_size]
        first, head = 0, b""
        if with_ctx:
            head, owns, stored = _plane0_ctx(part[0], part[1], hists[b % GROUP], gk, gfreq, gpresent,
                                             0 if owner < 0 else b - owner, keep_num, b, tabs)
            owner = b if owns else owner
            if stored is not None:
                tabs.append(stored)
            first = 1
        blocks.append(head + b"".join(_section(part[p], plane_coder, keep_num, prev[p]) for p in range(first, planes.shape[0])))
    return _assemble(blocks, u8, dtype, shape, coder, block_size, name)


def _assemble(blocks: list[bytes], u8: np.ndarray, dtype: str, shape: list[int], coder: str, block_size: int,
              name: str | None) -> EncodedTensor:
    index = np.concatenate([[0], np.cumsum([len(b) for b in blocks], dtype=np.int64)]).astype(np.int64)
    header = {"format": FORMAT_NAME, "version": format_version(coder), "dtype": dtype, "shape": shape, "coder": coder,
              "block_size": block_size}
    header["checksum"] = checksum_of(header, checksum(u8))
    return EncodedTensor(header, np.frombuffer(b"".join(blocks), np.uint8).copy(), index, name)


class _Reader:
    """Bounds-checked cursor over one block."""

    def __init__(self, data: bytes, name: str | None):
        self.data, self.pos, self.name = data, 0, name

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise CorruptStreamError(f"section runs past the end of the block (tensor {self.name!r})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def _symbols(bitmap: bytes) -> list[int]:
    return [8 * b + t for b in range(32) for t in range(8) if (bitmap[b] >> t) & 1]


def _decode_huffman(payload: _Reader, n: int, name: str | None) -> np.ndarray:
    syms = _symbols(payload.take(32))
    nib = payload.take((len(syms) + 1) // 2)
    lengths = np.zeros(256, np.int64)
    for j, s in enumerate(syms):
        lengths[s] = (nib[j >> 1] >> (4 * (j & 1))) & 0xF
    if len(syms) < 2 or any(not 1 <= lengths[s] <= 11 for s in syms) or sum(2 ** (11 - lengths[s]) for s in syms) != 2048:
        raise CorruptStreamError(f"invalid code table (tensor {name!r})")
    by_code = {v: s for s, v in _canonical(lengths).items()}
    sizes = [int.from_bytes(payload.take(4), "little") for _ in range(3)]
    streams = [payload.take(sz) for sz in sizes] + [payload.take(len(payload.data) - payload.pos)]
    out, q = np.empty(n, np.uint8), -(-n // 4)
    for st, stream in enumerate(streams):
        bits, nbits, used, o = int.from_bytes(stream, "little"), 8 * len(stream), 0, st * q
        for o in range(st * q, min((st + 1) * q, n)):
            code, ln = 0, 0
            while (code, ln) not in by_code:
                if used >= nbits or ln >= 11:
                    raise CorruptStreamError(f"entropy-coded stream does not decode to its exact length (tensor {name!r})")
                code, ln, used = (code << 1) | ((bits >> used) & 1), ln + 1, used + 1
            out[o] = by_code[(code, ln)]
        if -(-used // 8) != len(stream):
            raise CorruptStreamError(f"entropy-coded stream does not decode to its exact length (tensor {name!r})")
    return out


def _decode_rans(payload: _Reader, n: int, name: str | None) -> np.ndarray:
    syms = _symbols(payload.take(32))
    freq = [int.from_bytes(payload.take(2), "little") for _ in syms]
    if len(syms) < 2 or min(freq) == 0 or sum(freq) != 4096:
        raise CorruptStreamError(f"invalid code table (tensor {name!r})")
    slot_sym = np.repeat(np.arange(len(syms)), freq)
    cum = np.concatenate([[0], np.cumsum(freq)[:-1]])
    x = [int.from_bytes(payload.take(4), "little") for _ in range(4)]
    out = np.empty(n, np.uint8)
    for i in range(n):
        lane = i & 3
        j = int(slot_sym[x[lane] & 4095])
        x[lane] = freq[j] * (x[lane] >> 12) + (x[lane] & 4095) - int(cum[j])
        if x[lane] < 1 << 16:
            x[lane] = (x[lane] << 16) | int.from_bytes(payload.take(2), "little")
        out[i] = syms[j]
    if payload.pos != len(payload.data) or x != [1 << 16] * 4:
        raise CorruptStreamError(f"entropy-coded stream does not decode to its exact length (tensor {name!r})")
    return out


def _read_ctx_tables(payload: _Reader, name: str | None, extra: int = 0) -> tuple[int, np.ndarray]:
    """Parse mode-4 tables (k, first symbol, count-1, orders, exp-Golomb codes) into
    freq[2**(k + extra), 256] (``extra``: 0 for mode 4, 2 for mode 5's quarters)."""
    bad = CorruptStreamError(f"invalid code table (tensor {name!r})")
    head, lo, m1, orders = payload.take(4)
    k, skip, m, r0, r1 = head & 3, head >> 2, m1 + 1, orders & 15, orders >> 4
    if skip >= m or lo + m > 256 or r0 > 12 or r1 > 12 or (k + extra == 0 and r1):
        raise bad
    start, bit = payload.pos, 0

    def read_bit() -> int:
        nonlocal bit
        if start + (bit >> 3) >= len(payload.data):
            raise CorruptStreamError(f"section runs past the end of the block (tensor {name!r})")
        v = (payload.data[start + (bit >> 3)] >> (bit & 7)) & 1
        bit += 1
        return v

    freq = np.zeros((1 << (k + extra), 256), np.int64)
    for c in range(1 << (k + extra)):
        r = r0 if c == 0 else r1
        for j in range(m):
            if j == skip:
                continue
            z = 0
            while not read_bit():
                z += 1
                if z > 13:
                    raise bad
            u = 1
            for _ in range(z):
                u = (u << 1) | read_bit()
            v = u - 1
            for _ in range(r):
                v = (v << 1) | read_bit()
            f = v if c == 0 else int(freq[c - 1, lo + j]) + (v // 2 if v % 2 == 0 else -(v + 1) // 2)
            if not 0 <= f < 4096:
                raise bad
            freq[c, lo + j] = f
        implied = 4096 - int(freq[c].sum())
        if not 0 <= implied < 4096:
            raise bad
        freq[c, lo + skip] = implied
    last = payload.take(-(-bit // 8))
    if bit & 7 and last[-1] >> (bit & 7):
        raise bad
    return k, freq


def _decode_rans_ctx(payload: _Reader, n: int, tables: tuple[int, np.ndarray, int], p1: np.ndarray, name: str | None) -> np.ndarray:
    k, freq, short = tables  # bit j of short: lane j's state has 3 bytes (else 4, and >= 2**24)
    cum = np.concatenate([np.zeros((freq.shape[0], 1), np.int64), np.cumsum(freq, axis=1)[:, :-1]], axis=1)
    x = [int.from_bytes(payload.take(3 if short >> j & 1 else 4), "little") for j in range(4)]
    if any(v < 1 << 16 or (v < 1 << 24 and not short >> j & 1) for j, v in enumerate(x)):
        raise CorruptStreamError(f"entropy-coded stream does not decode to its exact length (tensor {name!r})")
    out = np.empty(n, np.uint8)
    for i in range(n):
        lane, c = i & 3, (int(p1[i]) >> (7 - k)) & ((1 << k) - 1)
        slot = x[lane] & 4095
        s = int(np.searchsorted(cum[c], slot, side="right")) - 1
        while freq[c, s] == 0:  # skip symbols absent from this context
            s -= 1
        x[lane] = int(freq[c, s]) * (x[lane] >> 12) + slot - int(cum[c, s])
        if x[lane] < 1 << 16:
            x[lane] = (x[lane] << 16) | int.from_bytes(payload.take(2), "little")
        out[i] = s
    if payload.pos != len(payload.data) or x != [1 << 16] * 4:
        raise CorruptStreamError(f"entropy-coded stream does not decode to its exact length (tensor {name!r})")
    return out


def decode_reference(enc: EncodedTensor, verify: bool = True) -> torch.Tensor:
    """Reference decoder: parses every section with explicit bounds checks (tiny inputs only)."""
    enc.validate()
    n_planes, bs = DTYPES[enc.dtype][1], enc.header["block_size"]
    planes = np.zeros((n_planes, enc.numel), np.uint8)
    data = enc.data.tobytes()
    tables: dict[int, tuple[int, np.ndarray]] = {}  # block -> its own mode-4 tables
    scale_models: dict[int, tuple] = {}  # block -> the mode-5 model it stores
    scale_ok = MODE_RANS_SCALE in context_modes_allowed(enc.header["version"], enc.header["coder"])
    for b in range(enc.index.size - 1):
        n = min(bs, enc.numel - b * bs)
        block = _Reader(data[enc.index[b] : enc.index[b + 1]], enc.name)
        ctx_payload = scale_payload = None
        for p in range(n_planes):
            mode = block.take(1)[0]
            if mode == MODE_RANS_SCALE and p == 0 and scale_ok and enc.dtype in ("bfloat16", "float16", "float32"):
                scale_payload = _Reader(block.take(int.from_bytes(block.take(4), "little")), enc.name)
                ref_byte = scale_payload.take(1)[0]
                ref, short = ref_byte & 15, ref_byte >> 4
                if ref == 0:
                    scale_models[b] = scale.read_model(scale_payload, enc.name, _read_ctx_tables)
                elif ref > b % GROUP or (b - ref) not in scale_models:
                    raise CorruptStreamError(f"invalid code table (tensor {enc.name!r})")
                scale_model = scale_models[b - ref]
                continue
            if mode == 4 and p == 0 and mode4_allowed(enc.header) and enc.dtype in ("bfloat16", "float16", "float32"):
                ctx_payload = _Reader(block.take(int.from_bytes(block.take(4), "little")), enc.name)
                ref_byte = ctx_payload.take(1)[0]
                ref, short = ref_byte & 15, ref_byte >> 4
                if ref == 0:
                    tables[b] = _read_ctx_tables(ctx_payload, enc.name)
                elif ref > b % GROUP or (b - ref) not in tables:
                    raise CorruptStreamError(f"invalid code table (tensor {enc.name!r})")
                ctx_tables = tables[b - ref] + (short,)
                continue
            if mode == 0:
                plane = np.frombuffer(block.take(n), np.uint8)
            elif mode == 1:
                plane = np.full(n, block.take(1)[0], np.uint8)
            elif mode in (2, 3):
                payload = _Reader(block.take(int.from_bytes(block.take(4), "little")), enc.name)
                plane = (_decode_huffman if mode == 2 else _decode_rans)(payload, n, enc.name)
            else:
                raise CorruptStreamError(f"unknown section mode {mode} (tensor {enc.name!r})")
            planes[p, b * bs : b * bs + n] = plane
        if block.pos != len(block.data):
            raise CorruptStreamError(f"bytes left over after the last plane (tensor {enc.name!r})")
        if scale_payload is not None:
            planes[0, b * bs : b * bs + n] = scale.decode_plane0(scale_payload, short, scale_model, b * bs, n,
                                                                 planes[1, b * bs : b * bs + n], enc.name)
        if ctx_payload is not None:  # plane 0 last: its contexts come from plane 1
            planes[0, b * bs : b * bs + n] = _decode_rans_ctx(ctx_payload, n, ctx_tables, planes[1, b * bs : b * bs + n], enc.name)
    raw = merge_planes(planes, enc.dtype) if enc.numel else np.zeros(0, np.uint8)
    if verify and checksum_of(enc.header, checksum(raw)) != enc.header["checksum"].lower():
        raise ChecksumMismatchError(f"checksum mismatch (tensor {enc.name!r})")
    out = torch.empty(enc.shape, dtype=torch_dtype(enc.dtype))
    if out.numel():
        out.reshape(-1).view(torch.uint8).numpy()[:] = raw
    return out
