"""Bounded memory: `llmcomp compress --verify` / `decompress` of a multi-shard checkpoint hold a few tensors.

Measured in a fresh subprocess running the CLI's ``main``: after a warm-up on a tiny checkpoint
(torch, numba kernels, transformers, thread pools all loaded) the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs``), then the run on the big checkpoint may raise the peak (``VmHWM``) by at
most BUDGET over the RSS at the reset. RSS counts file pages mapped into the process, so a
memory-mapped reader would be caught. (``ru_maxrss`` is not used: Linux carries it over ``exec``
from the parent, which can hide the child's own peak.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

MB = 1 << 20
SHARDS, PER_SHARD, ROWS, COLS = 4, 24, 1024, 1024  # 4 shards x 24 tensors x 2 MB (bf16) = 192 MB
BUDGET = 32 * MB  # a source shard is 48 MB (32 MB compressed); measured: +19 MB compress --verify, +14 MB decompress

CHILD = textwrap.dedent(
    r"""
    import json, re, sys, tempfile
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from llmcomp_hf.cli import main

    def status(key):
        with open("/proc/self/status") as f:
            return int(re.search(key + r":\s+(\d+) kB", f.read()).group(1)) * 1024

    mode, src, out, workers = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    warm = Path(tempfile.mkdtemp())
    (warm / "s").mkdir()
    save_file({"a.weight": (torch.randn(1024, 1024) * 0.02).bfloat16(), "b.bias": torch.zeros(8)},
              str(warm / "s" / "model.safetensors"))
    w = ["--workers", str(workers), "-q"]
    assert main(["compress", str(warm / "s"), str(warm / "c"), "--verify", *w]) == 0
    assert main(["decompress", str(warm / "c"), str(warm / "d"), *w]) == 0
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = status("VmRSS")
    extra = ["--verify"] if mode == "compress" else []
    assert main([mode, str(src), str(out), *extra, *w]) == 0
    print(json.dumps({"base": base, "peak": status("VmHWM")}))
    """
)


pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("big")
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    for s in range(SHARDS):
        name = f"model-{s + 1:05d}-of-{SHARDS:05d}.safetensors"
        tensors = {}
        for i in range(PER_SHARD):
            layer = s * PER_SHARD + i
            tensors[f"model.layers.{layer}.mlp.up_proj.weight"] = (
                torch.randn(ROWS, COLS, generator=gen) * 0.02).to(torch.bfloat16)
            tensors[f"model.layers.{layer}.norm.weight"] = torch.ones(COLS, dtype=torch.bfloat16)
        save_file(tensors, str(root / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return root


def _peak_delta(mode: str, src: Path, out: Path, workers: int) -> int:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(out), str(workers)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{mode}: baseline {result['base'] / MB:.0f} MB, peak +{(result['peak'] - result['base']) / MB:.1f} MB")
    return result["peak"] - result["base"]


def test_peak_memory_is_bounded_by_a_few_tensors(big, tmp_path):
    total = sum(f.stat().st_size for f in big.glob("*.safetensors"))
    assert total >= 5 * BUDGET
    delta = _peak_delta("compress", big, tmp_path / "c", workers=2)
    assert delta < BUDGET, f"compress --verify peak grew by {delta / MB:.0f} MB (budget {BUDGET / MB:.0f} MB)"
    delta = _peak_delta("decompress", tmp_path / "c", tmp_path / "d", workers=2)
    assert delta < BUDGET, f"decompress peak grew by {delta / MB:.0f} MB (budget {BUDGET / MB:.0f} MB)"
    assert (tmp_path / "d" / "model.safetensors.index.json").is_file()
