"""Pure numpy/Python reference of mode 5 (rANS with scale context, coder ``rans-scale``), written
from docs/format.md: the encoder (same bytes as scale_blocks.encode_groups_scale) and the decoder.

The scale maps (``scale_blocks.scale_maps``, numpy) and the frequency fitting (``rans_ctx.tables``,
run as plain Python) are shared with the kernels, as the reference of the other modes shares
models.py; everything written or parsed is this module's own.
"""

from __future__ import annotations

import numpy as np

import llmcomp_hf.codec.rans_ctx as rans_ctx
import llmcomp_hf.codec.rans_scale as rans_scale
import llmcomp_hf.codec.scale_blocks as scale_blocks
from llmcomp_hf.errors import CorruptStreamError

MODE = 5
GROUP = 16


def _zigzag(d: int) -> int:
    return 2 * d if d >= 0 else -2 * d - 1


def _eg(v: int, r: int) -> str:
    u = (v >> r) + 1
    return "0" * (u.bit_length() - 1) + format(u, "b") + (format(v & ((1 << r) - 1), f"0{r}b") if r else "")


def _pack(bits: str) -> bytes:
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8][::-1], 2) for i in range(0, len(bits), 8))


def value_codes(vals: list[int]) -> bytes:
    """Order byte + exp-Golomb codes of the zigzag deltas (first against 0), fewest bits (ties: lowest order)."""
    deltas = [_zigzag(int(v) - int(p)) for v, p in zip(vals, [0] + list(vals[:-1]))]
    r = min(range(13), key=lambda r: (sum(len(_eg(v, r)) for v in deltas), r))
    return bytes([r]) + _pack("".join(_eg(v, r) for v in deltas))


def block_symbols(p0: np.ndarray, p1: np.ndarray, g0: int, L: int, rows: np.ndarray, cols: np.ndarray, has_col: bool):
    """(s, 32-context, shifted symbol) of each element of a block."""
    g = g0 + np.arange(p0.size, dtype=np.int64)
    s = rows[g // L] + (cols[g % L] if has_col else 0)
    ctx = ((s & 3) << 3) | ((p1.astype(np.int64) >> 4) & 7)
    return s, ctx, (p0.astype(np.int64) + (s >> 2)) & 0xFF


def fold(hist: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((4 << k, 256), np.int64)
    for c in range(32):
        out[((c >> 3) << k) | ((c & 7) >> (3 - k))] += hist[c]
    return out


def model_bytes(k: int, L: int, cols: np.ndarray, has_col: bool, freq: np.ndarray, present: np.ndarray, tables) -> bytes:
    """The stored model: k | col << 2, u32 L, column codes, tables (``tables``: reference._ctx_tables)."""
    out = bytes([k | (int(has_col) << 2)]) + int(L).to_bytes(4, "little")
    if has_col:
        out += value_codes([int(v) for v in cols[:L]])
    return out + tables(freq, k, present)


def group_model(hists: list[np.ndarray], L, cols, has_col, tables):
    """(k, freq, present) minimising estimated bits plus model bytes; k = -1 under 2 symbols.

    The estimate (frequency fitting, costs, model size) is the encoder's model, shared with the
    kernels (compiled, as pure Python it takes minutes); the bytes written are this module's."""
    total = sum(hists)
    present = total.sum(axis=0)
    if np.count_nonzero(present) < 2:
        return -1, None, present
    best = None
    for k in range(rans_scale.ENCODER_MAX_K + 1):
        counts = fold(total, k)
        freq = rans_ctx.tables(counts, present)
        size = scale_blocks.model_bytes(k, L, cols, has_col, freq, present)
        c = rans_ctx.cost(counts, freq) + size * 8 * rans_ctx.COST_ONE
        if best is None or c < best[0]:
            best = (c, k, freq)
    return best[1], best[2], present


def payload(ctx, sym, k, freq, ref, model: bytes, rows_code: bytes) -> bytes:
    """A mode-5 payload: ref byte (with short-state flags), model (ref 0), rows, states, words."""
    c_all = ((ctx >> 3) << k) | ((ctx & 7) >> (3 - k))
    cum = np.concatenate([np.zeros((freq.shape[0], 1), np.int64), np.cumsum(freq, axis=1)[:, :-1]], axis=1)
    x, words = [1 << 16] * 4, []
    for i in range(sym.size - 1, -1, -1):
        s, lane, c = int(sym[i]), i & 3, int(c_all[i])
        f = int(freq[c, s])
        if x[lane] >= f << 20:
            words.append(x[lane] & 0xFFFF)
            x[lane] >>= 16
        x[lane] = ((x[lane] // f) << 12) + x[lane] % f + int(cum[c, s])
    flags = sum(1 << (4 + j) for j in range(4) if x[j] < 1 << 24)
    states = b"".join(v.to_bytes(3 if v < 1 << 24 else 4, "little") for v in x)
    return bytes([ref | flags]) + (model if ref == 0 else b"") + rows_code + states + b"".join(
        w.to_bytes(2, "little") for w in reversed(words))


def encode_blocks(planes: np.ndarray, numel: int, block_size: int, keep_num: int, maps, section, tables) -> list[bytes]:
    """Every block of a rans-scale stream: plane 0 const / mode 5 / raw, the rest by ``section``
    (reference._section under ``rans``)."""
    L, rows, cols, has_col = maps
    n_blocks = -(-numel // block_size)
    blocks = []
    for g_lo in range(0, n_blocks, GROUP):
        g_hi = min(g_lo + GROUP, n_blocks)
        hists = []
        for b in range(g_lo, g_hi):
            part = planes[:, b * block_size : (b + 1) * block_size]
            _, ctx, sym = block_symbols(part[0], part[1], b * block_size, L, rows, cols, has_col)
            h = np.zeros((32, 256), np.int64)
            np.add.at(h, (ctx, sym), 1)
            hists.append(h)
        gk, gfreq, gpresent = group_model(hists, L, cols, has_col, tables)
        owner, prev = -1, [dict() for _ in range(planes.shape[0])]
        for b in range(g_lo, g_hi):
            part = planes[:, b * block_size : (b + 1) * block_size]
            n = part.shape[1]
            p0 = part[0]
            head = b""
            if np.all(p0 == p0[0]):
                head = bytes([1, int(p0[0])])
            elif gk >= 0:
                _, ctx, sym = block_symbols(p0, part[1], b * block_size, L, rows, cols, has_col)
                model = model_bytes(gk, L, cols, has_col, gfreq, gpresent, tables)
                r0, r1 = b * block_size // L, (b * block_size + n - 1) // L
                pay = payload(ctx, sym, gk, gfreq, 0 if owner < 0 else b - owner, model,
                              value_codes([int(v) for v in rows[r0 : r1 + 1]]))
                if len(pay) < n * keep_num // 1024:
                    head = bytes([MODE]) + len(pay).to_bytes(4, "little") + pay
                    owner = b if owner < 0 else owner
            if not head:
                head = bytes([0]) + p0.tobytes()
            blocks.append(head + b"".join(section(part[p], "rans", keep_num, prev[p]) for p in range(1, planes.shape[0])))
    return blocks


def _codes(payload, count: int, name) -> list[int]:
    """Order byte, then ``count`` exp-Golomb zigzag deltas (running values 0..127), zero padding."""
    bad = CorruptStreamError(f"invalid code table (tensor {name!r})")
    r = payload.take(1)[0]
    if r > 12:
        raise bad
    start, bit, vals, prev = payload.pos, 0, [], 0

    def read_bit() -> int:
        nonlocal bit
        if start + (bit >> 3) >= len(payload.data):
            raise CorruptStreamError(f"section runs past the end of the block (tensor {name!r})")
        v = (payload.data[start + (bit >> 3)] >> (bit & 7)) & 1
        bit += 1
        return v

    for _ in range(count):
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
        prev += v // 2 if v % 2 == 0 else -(v + 1) // 2
        if not 0 <= prev <= 127:
            raise bad
        vals.append(prev)
    last = payload.take(-(-bit // 8))
    if bit & 7 and last[-1] >> (bit & 7):
        raise bad
    return vals


def read_model(payload, name, read_tables) -> tuple[int, int, np.ndarray, np.ndarray, bool]:
    """(k, L, column values, tables, column map present) of a model (``read_tables``: reference._read_ctx_tables)."""
    head = payload.take(1)[0]
    L = int.from_bytes(payload.take(4), "little")
    k, has_col = head & 3, (head >> 2) & 1
    if head >> 3 or L < 16 or (has_col and L > 1 << 16):
        raise CorruptStreamError(f"invalid code table (tensor {name!r})")
    cols = np.array(_codes(payload, L, name), np.int64) if has_col else np.zeros(1, np.int64)
    tk, freq = read_tables(payload, name, 2)
    if tk != k:
        raise CorruptStreamError(f"invalid code table (tensor {name!r})")
    return k, L, cols, freq, bool(has_col)


def decode_plane0(payload, short: int, model, g0: int, n: int, p1: np.ndarray, name) -> np.ndarray:
    """Rows, states and words of a mode-5 payload (after its ref byte and model) -> plane 0."""
    k, L, cols, freq, has_col = model
    rows = _codes(payload, (g0 + n - 1) // L - g0 // L + 1, name)
    g = g0 + np.arange(n, dtype=np.int64)
    s = np.array(rows, np.int64)[g // L - g0 // L] + (cols[g % L] if has_col else 0)
    cum = np.concatenate([np.zeros((freq.shape[0], 1), np.int64), np.cumsum(freq, axis=1)[:, :-1]], axis=1)
    x = [int.from_bytes(payload.take(3 if short >> j & 1 else 4), "little") for j in range(4)]
    stream_bad = CorruptStreamError(f"entropy-coded stream does not decode to its exact length (tensor {name!r})")
    if any(v < 1 << 16 or (v < 1 << 24 and not short >> j & 1) for j, v in enumerate(x)):
        raise stream_bad
    out = np.empty(n, np.uint8)
    for i in range(n):
        lane = i & 3
        c = ((int(s[i]) & 3) << k) | ((int(p1[i]) >> (7 - k)) & ((1 << k) - 1))
        slot = x[lane] & 4095
        d = int(np.searchsorted(cum[c], slot, side="right")) - 1
        while freq[c, d] == 0:
            d -= 1
        x[lane] = int(freq[c, d]) * (x[lane] >> 12) + slot - int(cum[c, d])
        if x[lane] < 1 << 16:
            x[lane] = (x[lane] << 16) | int.from_bytes(payload.take(2), "little")
        out[i] = (d - (int(s[i]) >> 2)) & 0xFF
    if payload.pos != len(payload.data) or x != [1 << 16] * 4:
        raise stream_bad
    return out
