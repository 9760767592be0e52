"""Write the golden fixtures of the encoded-tensor format (docs/format.md part 1).

    python tests/data/golden/make_golden.py

golden_v<FORMAT_VERSION>.json maps each case NAME to its header and encode arguments;
golden_v<FORMAT_VERSION>.npz holds the arrays ``NAME.data``, ``NAME.index`` and ``NAME.raw`` (the
original tensor's bytes). tests/codec/test_golden.py decodes them on every run and re-encodes ``raw``
to check the bytes have not drifted. Only rerun this on purpose, when the format version changes,
and commit the result; the fixtures of older versions (golden.json/golden.npz: versions 1 and 2)
stay as they are, so those versions keep decoding. ``SCALE_CASES`` (coder rans-scale, format
version 4) go to golden_v4.json/golden_v4.npz.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from llmcomp_hf.codec import FORMAT_VERSION, decode, encode

HERE = Path(__file__).resolve().parent
BS = 256
BS_SCALE = 2048  # mode 5's model (column map + 32 tables) pays off over blocks of a few thousand elements


def _weights(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = np.random.default_rng(seed)
    return torch.from_numpy(g.normal(0.0, 0.02, n).astype(np.float32)).to(dtype)


def _fp16_specials() -> torch.Tensor:
    t = _weights(300, torch.float16, 3)
    specials = [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E01, 0xFC01, 0x0001, 0x83FF, 0x7BFF]
    t.view(torch.int16)[::31][: len(specials)] = torch.tensor(specials, dtype=torch.int32).to(torch.int16)
    return t


def _bf16_nan_payloads() -> torch.Tensor:
    t = _weights(260, torch.bfloat16, 4)
    t.view(torch.int16)[[0, 1, 2, 3, 259]] = torch.tensor([0x7FC1, 0xFF81, 0x7F80, 0x8000, 0x0001]).to(torch.int16)
    return t


def _int8() -> torch.Tensor:
    g = np.random.default_rng(5)
    return torch.from_numpy(((g.geometric(0.3, 400) - 1) * g.choice([-1, 1], 400)).astype(np.int8))


CASES: dict[str, tuple[Callable[[], torch.Tensor], str]] = {
    "bf16_skewed_huffman": (lambda: _weights(600, torch.bfloat16, 1).reshape(20, 30), "huffman"),
    "bf16_skewed_rans": (lambda: _weights(600, torch.bfloat16, 1).reshape(20, 30), "rans"),
    "bf16_nan_payloads_huffman": (_bf16_nan_payloads, "huffman"),
    "fp32_huffman": (lambda: _weights(300, torch.float32, 2), "huffman"),
    "fp32_rans": (lambda: _weights(300, torch.float32, 2), "rans"),
    "fp16_specials_rans": (_fp16_specials, "rans"),
    "int8_rans": (_int8, "rans"),
    "int8_huffman": (_int8, "huffman"),
    "bf16_const_huffman": (lambda: torch.full((2, 200), -0.375, dtype=torch.bfloat16), "huffman"),
    "uint8_uniform_raw": (lambda: torch.from_numpy(np.random.default_rng(6).integers(0, 256, 300, dtype=np.uint8)), "raw"),
    "bf16_raw": (lambda: _weights(300, torch.bfloat16, 7), "raw"),
    "fp32_empty": (lambda: torch.zeros(0, 4, dtype=torch.float32), "huffman"),
    "int64_scalar": (lambda: torch.tensor(-123456789012, dtype=torch.int64), "rans"),
    # format version 2: mode-4 sections (group tables, references to them, own tables)
    "bf16_ctx_rans_ctx": (lambda: _weights(1100, torch.bfloat16, 8).reshape(11, 100), "rans-ctx"),
    "fp32_ctx_rans_ctx": (lambda: _weights(600, torch.float32, 9), "rans-ctx"),
}


def _row_scaled(rows: int, cols: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows (and columns) of different scale, as in an embedding: mode 5's case. A few zeros and a
    constant block (all zeros) too."""
    g = np.random.default_rng(seed)
    w = g.normal(0.0, 0.02, (rows, cols)) * np.exp2(g.normal(0, 1.5, (rows, 1))) * np.exp2(g.normal(0, 0.7, (1, cols)))
    w[0, :5] = 0.0
    w.reshape(-1)[-2048:] = 0.0  # the last block: const planes
    return torch.from_numpy(w.astype(np.float32)).to(dtype)


SCALE_CASES: dict[str, tuple[Callable[[], torch.Tensor], str]] = {
    "bf16_rows_rans_scale": (lambda: _row_scaled(64, 128, torch.bfloat16, 11), "rans-scale"),
    "fp32_rows_rans_scale": (lambda: _row_scaled(128, 64, torch.float32, 12), "rans-scale"),
    "fp16_rows_rans_scale": (lambda: _row_scaled(160, 64, torch.float16, 14), "rans-scale"),
}


def raw_bytes(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().copy()


def main() -> None:
    write(CASES, f"golden_v{FORMAT_VERSION}", BS)
    write(SCALE_CASES, "golden_v4", BS_SCALE)


def write(cases: dict[str, tuple[Callable[[], torch.Tensor], str]], stem: str, bs: int) -> None:
    manifest, arrays = {}, {}
    for name, (make, coder) in cases.items():
        t = make()
        enc = encode(t, coder=coder, block_size=bs)
        if not np.array_equal(raw_bytes(decode(enc)), raw_bytes(t)):
            raise SystemExit(f"{name}: the codec does not round-trip; fixtures not written")
        manifest[name] = {"encode": {"coder": coder, "block_size": bs}, "header": enc.header}
        arrays.update({f"{name}.data": enc.data, f"{name}.index": enc.index, f"{name}.raw": raw_bytes(t)})
        print(f"{name:28s} {enc.data.size:5d} data bytes, ratio {enc.ratio:.3f}")
    (HERE / f"{stem}.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    np.savez_compressed(HERE / f"{stem}.npz", **arrays)


if __name__ == "__main__":
    main()
