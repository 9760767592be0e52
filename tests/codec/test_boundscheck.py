"""Memory safety of the decoder on damaged input, with numba's bounds checking switched on.

Without it an out-of-bounds read or write in a kernel can pass silently. A subprocess recompiles
the kernels with NUMBA_BOUNDSCHECK=1 (into a private cache dir, so the shared cache is not
touched), then decodes every single-byte corruption and every truncation of the small streams
in damage.BASES with verify=False: any IndexError means a missing check in a kernel.
Takes about a minute (cold compile), so it runs only with HYPOTHESIS_PROFILE=long.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SWEEP = r"""
import numpy as np
from dataclasses import replace
from llmcomp_hf.codec import decode, FormatError
from tests.codec.damage import BASES, base

from tests.codec.test_jobs import Table

bad = []
def attempt(enc, what, **kw):
    try:
        decode(enc, verify=False, **kw)
    except FormatError:
        pass
    except Exception as exc:  # noqa: BLE001 - what this sweep looks for
        bad.append(f"{what}: {type(exc).__name__}: {str(exc)[:100]}")
    if kw.get("threads", 1) == 1:  # the same stream as one job of a batch (the prefetcher's kernel)
        try:
            Table([enc]).run()
        except Exception as exc:  # noqa: BLE001
            bad.append(f"{what} as a job: {type(exc).__name__}: {str(exc)[:100]}")

for name in BASES:
    t, enc = base(name)
    rng = np.random.default_rng(1)
    for pos in range(enc.data.size):
        for mask in (int(rng.integers(1, 256)), 0x01, 0xFF):
            data = enc.data.copy()
            data[pos] ^= mask
            for th in (1, 2):
                attempt(replace(enc, data=data), f"{name} byte {pos} ^ {mask:#04x} threads={th}", threads=th)
    for keep in range(enc.data.size):
        attempt(replace(enc, data=enc.data[:keep].copy(), index=np.minimum(enc.index, keep)), f"{name} cut {keep}", threads=1)
print(len(bad), "problems")
print("\n".join(bad[:20]))
raise SystemExit(1 if bad else 0)
"""


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE") != "long", reason="fuzzing session only (HYPOTHESIS_PROFILE=long)")
def test_decoder_in_bounds_on_damaged_input(tmp_path: Path) -> None:
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "numba"), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", SWEEP], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
