"""Every public decode entry point validates its input before a kernel runs (issue 8).

A tampered block index reaching a numba kernel reads and writes out of bounds (a segfault
kills the interpreter), so these cases run in a child process: a crash fails the test instead of
killing pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap



_SCRIPT = textwrap.dedent(
    """
    from dataclasses import replace

    import torch

    from llmcomp_hf.codec import FormatError, decode, decode_many, encode
    from llmcomp_hf.codec.api import decode_rows
    from llmcomp_hf.modules import CompressedEmbedding, CompressedLinear

    t = torch.arange(64 * 64, dtype=torch.float32).reshape(64, 64).to(torch.bfloat16)
    enc = encode(t, block_size=256, name="emb.weight")
    for at, value in ((0, -(2**62)), (1, 2**62), (-1, 2**40), (2, -5)):
        idx = enc.index.copy()
        idx[at] = value
        bad = replace(enc, index=idx)
        calls = {
            "decode": lambda: decode(bad),
            "decode_many": lambda: decode_many([enc, bad]),
            "decode_rows": lambda: decode_rows(bad, torch.tensor([0, 5, 63])),
            "embedding": lambda: CompressedEmbedding(bad)(torch.tensor([1, 2])),
            "linear": lambda: CompressedLinear(bad)(torch.zeros(1, 64, dtype=torch.bfloat16)),
        }
        for entry, call in calls.items():
            print(f"index[{at}]={value} {entry}:", end=" ", flush=True)
            try:
                call()
                print("decoded", flush=True)
            except FormatError as exc:
                print("FormatError" if "emb.weight" in str(exc) else f"unnamed {exc}", flush=True)
    """
)


def test_tampered_index_is_refused_by_every_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=600)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, f"exit {proc.returncode} (negative: a signal) at {lines[-1:]}\n{proc.stderr[-2000:]}"
    assert len(lines) == 20 and all(line.endswith(": FormatError") for line in lines), proc.stdout
