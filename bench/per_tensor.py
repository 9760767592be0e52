"""Per-tensor comparison for bench/codec_minilm.py: every llmcomp coder and every peer on each tensor,
the rows of the main table for the peers, the table "where a peer beats us", and the row-scaled
word embedding (bench.peers.row_scaled_embedding) through everything.

"Ours" in the per-tensor table is ``rans-scale`` (the smallest coder; it already keeps the smaller
of its mode-5 stream and the rans-ctx one per tensor). A peer "beats us" on a tensor when its
output is smaller than ours; the target of issue 16 is that none does by more than 0.2 %.
"""

from __future__ import annotations

import numpy as np
import torch

from bench import peers

OURS = "rans-scale"
MARGIN = 0.002


def our_sizes(tensors: list[torch.Tensor], coders: tuple[str, ...]) -> dict[str, list[int]]:
    from llmcomp_hf.codec import encode

    return {f"llmcomp {c}": [encode(t, coder=c).nbytes for t in tensors] for c in coders}


def peer_results(tensors: list[torch.Tensor], dtype: str, reps: int, zipnn: bool = True) -> list[dict]:
    """z4ai at 1 and 2 threads, lmzip at 1, zipnn per tensor at 2 (each: sizes, times, exactness)."""
    out = [dict(peers.z4ai_sizes(tensors, dtype, th, reps), threads=th) for th in (1, 2)]
    out.append(dict(peers.lmzip_sizes(tensors, dtype, reps), threads=1))
    if zipnn:
        out.append(dict(peers.zipnn_sizes(dtype, 2, reps), threads=2, name="zipnn 0.5.4, per tensor"))
    return out


def peer_rows(results: list[dict], dtype: str, nbytes: int, bits: int, row_cls: type) -> list:
    rows = []
    for r in results:
        ratio = sum(r["sizes"]) / nbytes
        rows.append(row_cls(dtype, r["name"], r["threads"], ratio, ratio * bits, nbytes / r["enc_s"] / 1e6,
                            nbytes / r["dec_s"] / 1e6, r["exact"], reps=0, note="per tensor"))
    return rows


def beaten(names: list[str], tensors: list[torch.Tensor], ours: dict[str, list[int]], results: list[dict]) -> list[dict]:
    """Tensors on which a peer's output is smaller than ours (rans-scale)."""
    out = []
    mine = ours[f"llmcomp {OURS}"]
    for i, (name, t) in enumerate(zip(names, tensors)):
        best = min(results, key=lambda r: r["sizes"][i])
        if best["sizes"][i] < mine[i]:
            out.append({"tensor": name, "numel": t.numel(), "ours": mine[i], "peer": best["name"],
                        "peer_size": best["sizes"][i], "gap": mine[i] / best["sizes"][i] - 1.0})
    return out


def beaten_markdown(dtype: str, rows: list[dict], n_tensors: int) -> str:
    over = [r for r in rows if r["gap"] > MARGIN]
    head = (f"\n**{dtype}: tensors where a peer is smaller than llmcomp {OURS}** ({len(rows)} of {n_tensors}; "
            f"by more than {MARGIN:.1%}: {len(over)})\n\n")
    if not rows:
        return head + "none\n"
    table = "| tensor | elements | ours (bytes) | best peer | its bytes | ours larger by |\n|---|---|---|---|---|---|\n"
    for r in sorted(rows, key=lambda r: -r["gap"]):
        table += (f"| {r['tensor']} | {r['numel']:,} | {r['ours']:,} | {r['peer']} | {r['peer_size']:,} | "
                  f"{r['gap']:+.2%} |\n")
    return head + table


def order0_bound(t: torch.Tensor) -> float:
    """Order-0 entropy of the whole bit pattern, one table (16-bit dtypes), as bytes."""
    w = t.reshape(-1).view(torch.int16).numpy().view(np.uint16)
    counts = np.bincount(w, minlength=65536).astype(np.float64)
    p = counts[counts > 0] / w.size
    return float(-(counts[counts > 0] * np.log2(p)).sum() / 8)


def row_scaled_markdown(word: torch.Tensor, coders: tuple[str, ...], reps: int) -> tuple[str, dict]:
    """Every coder and peer on the row-scaled word embedding, per dtype: a small table and its data."""
    base = peers.row_scaled_embedding(word)
    lines = ["\n**MiniLM word embedding, rows scaled by a frequency-like factor** (bench.peers."
             "row_scaled_embedding; ratio)\n", "| dtype | " + " | ".join(f"llmcomp {c}" for c in coders) +
             " | z4ai 0.2.0 | lmzip 1.3.0 | order-0 bound (16-bit value) |", "|---" * (len(coders) + 4) + "|"]
    data = {}
    for dtype, dt in (("bfloat16", torch.bfloat16), ("float16", torch.float16), ("float32", torch.float32)):
        t = base.to(dt).contiguous()
        nbytes = t.numel() * t.element_size()
        ours = our_sizes([t], coders)
        res = [peers.z4ai_sizes([t], dtype, 2, 1), peers.lmzip_sizes([t], dtype, 1)]
        bound = order0_bound(t) / nbytes if t.element_size() == 2 else None
        cells = [ours[f"llmcomp {c}"][0] / nbytes for c in coders] + [r["sizes"][0] / nbytes for r in res]
        data[dtype] = {"ratios": cells, "bound": bound}
        lines.append(f"| {dtype} | " + " | ".join(f"{v:.4f}" for v in cells) + f" | {'—' if bound is None else f'{bound:.4f}'} |")
    return "\n".join(lines) + "\n", data
