#!/usr/bin/env bash
# The one prepared command for a lent GPU machine: CUDA decoder tests, then its benchmark.
#
#   bash bench/device_gpu.sh        # from the repo root; logs and results under $OUT
#
# Optional carried folder (gitignored), prepared on a dev machine with
#   pip download pytest hypothesis --only-binary=:all: -d bench/results/device_carry/wheels
#   python -m bench.bench_cuda --export-minilm bench/results/device_carry/minilm_bf16.safetensors
# and passed as carry=["bench/results/device_carry"] (~50 MB): the wheels let the GPU tests run
# where pytest is missing; the weights make the benchmark use real MiniLM values (else synthetic).
# Worst case ~7.5 min (two timeouts); typically 2-4 min.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/device}
CARRY=bench/results/device_carry
mkdir -p "$OUT"
export PYTHONWARNINGS=ignore
start=$(date +%s)
{
  date
  nvidia-smi
  python -V
  python -c "import torch, numba; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numba', numba.__version__)"
  python -c "import numba_cuda; print('numba-cuda', getattr(numba_cuda, '__version__', '?'))"
} > "$OUT/env.txt" 2>&1
if ! python -c "import pytest, hypothesis" 2>/dev/null && [ -d "$CARRY/wheels" ]; then
  python -m pip install -q --no-index --find-links "$CARRY/wheels" pytest hypothesis >> "$OUT/env.txt" 2>&1
fi

echo "== GPU tests"
if python -c "import pytest, hypothesis" 2>/dev/null; then
  timeout 200 python -m pytest -q -p no:cacheprovider -rfEs \
    tests/codec/test_cuda_gpu.py "tests/codec/test_cuda_sim.py::test_kernels_compile_to_ptx" \
    --junitxml "$OUT/junit.xml" > "$OUT/pytest.log" 2>&1
  echo "rc=$? :: $(tail -n 1 "$OUT/pytest.log")"
  grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -n 20
else
  echo "pytest/hypothesis not installed here: GPU tests skipped (the benchmark still checks every decode)"
fi

echo "== benchmark"
timeout 250 python -m bench.bench_cuda --out "$OUT" > "$OUT/bench.log" 2>&1
echo "rc=$?"
sed -n '/^# CUDA decode/,$p' "$OUT/bench.log"
grep -E "Error|Traceback" "$OUT/bench.log" | head -n 5
echo "elapsed $(( $(date +%s) - start ))s"
