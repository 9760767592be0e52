"""Write the golden fixtures of format parts 2 (shards) and 3 (lossy weights), docs/format.md.

    python tests/format/make_golden.py

Writes into tests/format/data/:

- ``shard.safetensors``: a part-2 shard as a writer stores it: four compressed weights, one per coder
  (``X.weight.llmcomp_data|index|header``), two plain tensors, and ``__metadata__`` with
  ``format``, ``llmcomp.format``, ``llmcomp.version`` and the ``llmcomp.plain.<key>`` checksums;
- ``shard_expected.safetensors``: the decoded checkpoint (the original tensors, plain safetensors);
- ``lossy.safetensors``: a part-3 shard: a uniform-quantized bf16 weight, a rank-2 fp32 weight with a
  quantized residual, and a plain tensor;
- ``lossy_inputs.safetensors``: the original tensors it was compressed from;
- ``lossy_expected.safetensors``: what loading it gives (the reconstruction, plain tensors as stored).

tests/format/test_golden_shards.py decodes them on every run, checks keys, metadata and headers, and
re-encodes the inputs to check the writers still produce the same bytes; it never runs this script.
Rerun it only on purpose (a new shard or transform format version), update the SHA-256 list in the
test, and commit both with the change; the fixtures of an older version stay, so it keeps loading.

The rank-2 weight keeps its reconstruction exact on every CPU: each product of two fp16 factors is
exact in float32 and a sum of two exact terms rounds once, whatever the BLAS summation order or FMA.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from llmcomp_hf.codec import encode
from llmcomp_hf.format import SHARD_METADATA, compress_lossy, load_checkpoint, pack, plain_checksums
from llmcomp_hf.transforms import LowRank, Pipeline, UniformQuant

DATA = Path(__file__).resolve().parent / "data"
BLOCK_SIZE = 256

# part 2: compressed weight -> (its coder, dtype, shape)
LOSSLESS = {
    "model.layers.0.attn.q.weight": ("huffman", torch.bfloat16, (16, 32)),
    "model.layers.0.attn.k.weight": ("rans", torch.bfloat16, (16, 32)),
    "model.layers.0.attn.v.weight": ("rans-ctx", torch.float32, (8, 40)),
    "model.layers.0.attn.o.weight": ("raw", torch.float16, (16, 20)),
}
# part 3: lossy weight -> (its pipeline, dtype, shape)
LOSSY = {
    "model.layers.0.mlp.up.weight": (Pipeline(stages=(UniformQuant(bits=4, group_size=32),)), torch.bfloat16, (16, 64)),
    "model.layers.0.mlp.down.weight": (
        Pipeline(stages=(LowRank(rank=2, method="svd", residual=UniformQuant(bits=8, group_size=16)),)),
        torch.float32, (32, 16)),
}
LOSSY_CODER = "rans"


def weights(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = np.random.default_rng(seed)
    return torch.from_numpy(g.normal(0.0, 0.02, shape).astype(np.float32)).to(dtype)


def plain_tensors() -> dict[str, torch.Tensor]:
    norm = torch.from_numpy(np.random.default_rng(90).normal(1.0, 0.1, 32).astype(np.float32))
    return {"model.norm.weight": norm, "model.layers.0.attn.q.bias": weights((16,), torch.bfloat16, 91)}


def metadata(state: dict[str, torch.Tensor]) -> dict[str, str]:
    return {"format": "pt", **SHARD_METADATA, **plain_checksums(state)}


def make_shard() -> None:
    originals = {name: weights(shape, dtype, seed) for seed, (name, (_, dtype, shape)) in enumerate(LOSSLESS.items(), 1)}
    originals.update(plain_tensors())
    state: dict[str, torch.Tensor] = {}
    for name, tensor in originals.items():
        coder = LOSSLESS.get(name, (None,))[0]
        state.update(pack(name, encode(tensor, coder=coder, block_size=BLOCK_SIZE)) if coder else {name: tensor})
    save_file(state, DATA / "shard.safetensors", metadata=metadata(state))
    save_file(originals, DATA / "shard_expected.safetensors")
    _check(DATA / "shard.safetensors", originals)


def make_lossy() -> None:
    inputs = {name: weights(shape, dtype, seed) for seed, (name, (_, dtype, shape)) in enumerate(LOSSY.items(), 11)}
    inputs.update({"model.norm.weight": plain_tensors()["model.norm.weight"]})
    state: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    for name, tensor in inputs.items():
        if name in LOSSY:
            stored, recon = compress_lossy(name, tensor, LOSSY[name][0], coder=LOSSY_CODER, block_size=BLOCK_SIZE)
            state.update(stored.pack())
            expected[name] = recon
        else:
            state[name] = expected[name] = tensor
    save_file(state, DATA / "lossy.safetensors", metadata=metadata(state))
    save_file(inputs, DATA / "lossy_inputs.safetensors")
    save_file(expected, DATA / "lossy_expected.safetensors")
    _check(DATA / "lossy.safetensors", expected)


def _check(file: Path, want: dict[str, torch.Tensor]) -> None:
    got = load_checkpoint(file)
    if sorted(got) != sorted(want) or not all(torch.equal(got[k].view(torch.uint8), want[k].view(torch.uint8))
                                              for k in want):
        raise SystemExit(f"{file.name}: does not load back to what was written; commit nothing")


def main() -> None:
    DATA.mkdir(exist_ok=True)
    make_shard()
    make_lossy()
    for file in sorted(DATA.glob("*.safetensors")):
        print(f'    "{file.name}": "{hashlib.sha256(file.read_bytes()).hexdigest()}",  # {file.stat().st_size} bytes')


if __name__ == "__main__":
    main()
