"""Mode 5 (rANS with scale context) for the spec oracle (spec.py), written from docs/format.md alone."""

from __future__ import annotations

import numpy as np


def value_list(payload, count: int, check, exp_golomb) -> list[int]:
    """Order byte r (<= 12), then ``count`` order-r exp-Golomb zigzag deltas, LSB-first, zero padding;
    running values in 0..127."""
    w = payload.where
    _, rb = payload.take(1)
    r = int(rb[0])
    check(r <= 12, f"{w}: mode-5 value-list order {r}")
    bitv = np.unpackbits(payload.data[payload.pos:payload.end], bitorder="little")
    p, prev, vals = 0, 0, []
    for _ in range(count):
        v, p = exp_golomb(bitv, p, r, w)
        prev += v // 2 if v % 2 == 0 else -(v + 1) // 2
        check(0 <= prev <= 127, f"{w}: mode-5 value {prev} outside 0..127")
        vals.append(prev)
    nbytes = -(-p // 8)
    check(not bitv[p:8 * nbytes].any(), f"{w}: mode-5 value-list padding bits are not zero")
    payload.take(nbytes)
    return vals


def model(payload, sec, check, exp_golomb, ctx_tables) -> tuple:
    """k | col << 2, u32 L, column values when col, then 4 * 2**k tables in mode 4's format."""
    w = payload.where
    at, head = payload.take(5)
    sec.fields["scale_head"] = (at, 5)
    k, col = int(head[0]) & 3, (int(head[0]) >> 2) & 1
    L = int(head[1:5].view("<u4")[0])
    check(int(head[0]) >> 3 == 0 and L >= 16 and (not col or L <= 65536), f"{w}: mode-5 model head {head.tolist()}")
    cols = value_list(payload, L, check, exp_golomb) if col else [0] * L
    tk, freq = ctx_tables(payload, sec, 2)
    check(tk == k, f"{w}: mode-5 tables have k={tk}, model k={k}")
    return k, L, np.array(cols, np.int64), freq


def decode(payload, sec, n: int, g0: int, mdl: tuple, p1: np.ndarray, short: int, check, exp_golomb) -> np.ndarray:
    """Rows, states and words after the ref byte (and model): s = R[row] + C[col], table
    ((s & 3) << k) | top k mantissa bits, p0 = (symbol - (s >> 2)) mod 256."""
    w = payload.where
    k, L, cols, freq = mdl
    r0, r1 = g0 // L, (g0 + n - 1) // L
    rows = value_list(payload, r1 - r0 + 1, check, exp_golomb)
    cum = np.concatenate([np.zeros((freq.shape[0], 1), np.int64), np.cumsum(freq, axis=1)], axis=1)
    sizes = [3 if short >> j & 1 else 4 for j in range(4)]
    _, sb = payload.take(sum(sizes))
    offs = np.cumsum([0] + sizes)
    x = [int.from_bytes(sb[offs[j]:offs[j + 1]].tobytes(), "little") for j in range(4)]
    for j in range(4):
        check(x[j] >= 1 << (16 if sizes[j] == 3 else 24), f"{w}: lane {j} state {x[j]} in {sizes[j]} bytes")
    rest = payload.end - payload.pos
    check(rest % 2 == 0, f"{w}: rANS word stream has odd length {rest}")
    _, wb = payload.take(rest)
    words = wb.view("<u2").astype(np.int64)
    nxt = 0
    out = np.empty(n, np.uint8)
    for i in range(n):
        g = g0 + i
        s = rows[g // L - r0] + int(cols[g % L])
        lane, c = i & 3, ((s & 3) << k) | ((int(p1[i]) >> (7 - k)) & ((1 << k) - 1))
        slot = x[lane] & 4095
        d = int(np.searchsorted(cum[c], slot, side="right")) - 1
        out[i] = (d - (s >> 2)) % 256
        x[lane] = int(freq[c, d]) * (x[lane] >> 12) + slot - int(cum[c, d])
        if x[lane] < 1 << 16:
            check(nxt < words.size, f"{w}: rANS word stream exhausted at symbol {i}")
            x[lane] = ((x[lane] << 16) | int(words[nxt])) & 0xFFFFFFFF
            nxt += 1
    check(all(v == 1 << 16 for v in x), f"{w}: final rANS lane states {x} != 2**16")
    check(nxt == words.size, f"{w}: {words.size - nxt} rANS words left over")
    return out
