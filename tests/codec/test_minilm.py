"""Every tensor of the real all-MiniLM-L6-v2, as fp32, bf16 and fp16, through both coders.

About 180 MB per coder; runs in a few seconds, so it stays in the default (CI) run.
"""

from __future__ import annotations

import pytest
import torch

from llmcomp_hf.codec import decode, encode

from .helpers import assert_same_bits

# Upper bounds on the whole-model ratio (stored bytes incl. headers/index over original bytes), a
# hair above what the codec reached when written (huffman/rans: bf16 0.6652/0.6630, fp16
# 0.8486/0.8474, fp32 0.8192/0.8179; zipnn 0.6651, 0.8485, 0.8193): a regression guard.
MAX_RATIO = {
    ("bfloat16", "huffman"): 0.667, ("bfloat16", "rans"): 0.665,
    ("float16", "huffman"): 0.851, ("float16", "rans"): 0.850,
    ("float32", "huffman"): 0.822, ("float32", "rans"): 0.821,
}


@pytest.mark.parametrize("coder", ["huffman", "rans"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_minilm_every_tensor(minilm: dict[str, torch.Tensor], dtype: torch.dtype, coder: str) -> None:
    stored = original = 0
    for name, w in minilm.items():
        t = w.to(dtype) if w.is_floating_point() else w
        enc = encode(t, coder=coder, name=name)
        assert_same_bits(decode(enc), t, f"{name} {dtype} {coder}")
        if w.is_floating_point():
            stored += enc.nbytes
            original += t.numel() * t.element_size()
    ratio = stored / original
    assert ratio < MAX_RATIO[(str(dtype)[6:], coder)], f"MiniLM {dtype} {coder}: ratio {ratio:.4f}"


def test_minilm_threads_and_out(minilm: dict[str, torch.Tensor]) -> None:
    w = minilm["embeddings.word_embeddings.weight"].to(torch.bfloat16)
    enc1 = encode(w, coder="huffman", threads=1)
    enc2 = encode(w, coder="huffman", threads=2)
    assert (enc1.data == enc2.data).all() and (enc1.index == enc2.index).all()
    out = torch.empty_like(w)
    decode(enc1, out=out, threads=2)
    assert_same_bits(out, w)
    assert_same_bits(decode(enc1, threads=1), w)
