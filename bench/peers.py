"""The 2026 PyPI peers of bench/codec_minilm.py, measured on the same tensors: z4ai 0.2.0 and
lmzip 1.3.0 (``pip install -e .[bench]``), and zipnn per tensor (in its own process, as its
thread count is process-wide).

Each peer compresses **each tensor separately**, as llmcomp stores them, so the per-tensor table
compares like with like. z4ai: ``z4ai.compress(bytes, dtype=..., threads=thr)`` (its default
tier, which includes its order-1 exponent coder) and ``z4ai.decompress``; the frame is counted
whole. lmzip: ``lmz.codec.encode_chunk`` / ``decode_chunk`` on each tensor in chunks of its
default 8 MiB (bf16 as its conditioned bf16 kind, other dtypes as bytes), one thread (its API
codes a chunk on the calling thread); only the chunk payloads are counted, not lmzip's archive
index (so its ratio is slightly flattering). Encoders are timed once (both run at 5-20 MB/s).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

Z4AI_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
LMZ_CHUNK = 8 << 20


def _raw(t: torch.Tensor) -> bytes:
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _median(fn, reps: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def z4ai_sizes(tensors: list[torch.Tensor], dtype: str, threads: int, reps: int) -> dict:
    """Per-tensor compressed sizes, total encode/decode seconds and bit-exactness of z4ai."""
    import z4ai

    raws = [_raw(t) for t in tensors]
    code = Z4AI_DTYPES[dtype]
    z4ai.decompress(z4ai.compress(raws[0], dtype=code, threads=threads))  # warm-up (native build, pools)
    t_enc, blobs = _median(lambda: [z4ai.compress(r, dtype=code, threads=threads) for r in raws], 1)
    t_dec, outs = _median(lambda: [bytes(z4ai.decompress(b)) for b in blobs], reps)
    return {"sizes": [len(b) for b in blobs], "enc_s": t_enc, "dec_s": t_dec,
            "exact": all(o == r for o, r in zip(outs, raws)), "name": "z4ai 0.2.0"}


def lmzip_sizes(tensors: list[torch.Tensor], dtype: str, reps: int) -> dict:
    """As z4ai_sizes, for lmzip's chunk codec (one thread)."""
    from lmz import codec, planner
    from lmz.api import DEFAULT_LEVEL

    esize = tensors[0].element_size()
    kind = planner.KIND_BF16 if dtype == "bfloat16" else planner.KIND_BYTES
    raws = [_raw(t) for t in tensors]

    def enc_one(raw: bytes) -> list[tuple[bytes, int, int, int, int]]:
        out = []
        for at in range(0, max(len(raw), 1), LMZ_CHUNK):
            piece = raw[at : at + LMZ_CHUNK]
            parts, cid, flags, crc = codec.encode_chunk(piece, esize, DEFAULT_LEVEL, True, kind=kind)
            payload = b"".join(bytes(p) for p in (parts if isinstance(parts, list) else [parts]))
            out.append((payload, cid, flags, len(piece), crc))
        return out

    def dec_one(chunks) -> bytes:
        return b"".join(bytes(codec.decode_chunk(p, cid, esize, flags, rlen, crc)) for p, cid, flags, rlen, crc in chunks)

    t_enc, encs = _median(lambda: [enc_one(r) for r in raws], 1)
    t_dec, outs = _median(lambda: [dec_one(c) for c in encs], reps)
    return {"sizes": [sum(len(c[0]) for c in chunks) for chunks in encs], "enc_s": t_enc, "dec_s": t_dec,
            "exact": all(o == r for o, r in zip(outs, raws)), "name": "lmzip 1.3.0"}


def zipnn_sizes(dtype: str, threads: int, reps: int) -> dict:
    """zipnn per tensor, in a fresh process (bench.peers --zipnn-tensors)."""
    cmd = [sys.executable, "-m", "bench.peers", "--zipnn-tensors", dtype, str(threads), str(reps)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _zipnn_tensors_worker(dtype: str, threads: int, reps: int) -> None:
    import zipnn

    from bench.codec_minilm import load_models

    m = load_models([dtype])[dtype]
    z = zipnn.ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads)
    raws = [_raw(t) for t in m.tensors]
    z.decompress(z.compress(bytearray(raws[0])))
    t_enc, blobs = _median(lambda: [z.compress(bytearray(r)) for r in raws], 1)  # compress() rewrites its input
    t_dec, outs = _median(lambda: [bytes(z.decompress(b)) for b in blobs], reps)
    print(json.dumps({"sizes": [len(b) for b in blobs], "enc_s": t_enc, "dec_s": t_dec,
                      "exact": all(o == r for o, r in zip(outs, raws)), "name": "zipnn 0.5.4"}))


def row_scaled_embedding(word: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """MiniLM's word embedding with each row scaled by a frequency-like factor: token ``i`` gets a
    rank ``r`` (a fixed shuffle) and scale ``(1 + r) ** -0.08`` (1 down to 0.44), the 2.2x spread of
    row mean |w| seen in a small trained LM's embedding, where rare tokens stay small."""
    rank = np.random.default_rng(seed).permutation(word.shape[0])
    factor = torch.from_numpy((1.0 + rank) ** -0.08).to(torch.float32)
    return word.float() * factor[:, None]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--zipnn-tensors":
        _zipnn_tensors_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
