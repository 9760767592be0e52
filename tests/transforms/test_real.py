"""Real weights (all-MiniLM-L6-v2): error levels of each stage, and end-to-end embedding quality."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from llmcomp_hf.quality import embed, embedding_quality, input_importance, load_sentences, tensor_sensitivity
from llmcomp_hf.transforms import (
    EntropyCodedQuant,
    KMeansQuant,
    LowRank,
    NF4Quant,
    NMPrune,
    Pipeline,
    UniformQuant,
)

from .conftest import SENTENCES


@pytest.mark.parametrize(
    ("cfg", "lo", "hi"),
    [
        (UniformQuant(bits=8, group_size=128), 0.0, 1e-2),
        (UniformQuant(bits=8, group_size="channel"), 0.0, 1e-2),
        (UniformQuant(bits=4, group_size=64), 0.05, 0.15),
        (NF4Quant(group_size=64), 0.05, 0.13),
        (KMeansQuant(levels=16, group_size=64), 0.05, 0.12),
        (EntropyCodedQuant(step=0.25), 0.06, 0.08),  # step/sqrt(12) of the RMS: 0.072
        (LowRank(energy=0.9), 0.30, 0.32),  # sqrt(1 - 0.9) = 0.316
        (Pipeline(stages=(NMPrune(2, 4), UniformQuant(bits=8))), 0.3, 0.4),
    ],
    ids=lambda v: v.to_json()[:50] if hasattr(v, "to_json") else str(v),
)
def test_minilm_query_relative_error(minilm_query: torch.Tensor, cfg, lo: float, hi: float) -> None:
    out = cfg.apply(minilm_query)
    assert lo <= out.error.rel_fro < hi


def _entropy_bits(codes: torch.Tensor) -> float:
    _, counts = torch.unique(codes, return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * p.log2()).sum())


def test_minilm_ecq_rate_beats_fixed_width(minilm_query: torch.Tensor) -> None:
    """At NF4's error, fine-grid codes need fewer bits (order-0 entropy) than NF4's 4 bits + scales."""
    nf4 = NF4Quant(group_size=64).apply(minilm_query)
    ec = EntropyCodedQuant(step=None, target_rel_mse=nf4.error.rel_mse).apply(minilm_query)
    assert ec.error.rel_mse == pytest.approx(nf4.error.rel_mse, rel=0.01)
    assert _entropy_bits(ec.tensors["codes"]) < 3.8 < _entropy_bits(nf4.tensors["codes"])


def _quantized_copy(model: torch.nn.Module, cfg) -> torch.nn.Module:
    out = copy.deepcopy(model)
    with torch.no_grad():
        for module in out.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(cfg.apply(module.weight).reconstruct())
    return out


def test_sentences_file(tmp_path: Path) -> None:
    sentences = load_sentences(SENTENCES)
    assert len(sentences) >= 200 and len(set(sentences)) == len(sentences)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="one sentence per line"):
        load_sentences(empty)


def test_minilm_embedding_quality(minilm_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(str(minilm_path)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_path))
    sentences = load_sentences(SENTENCES)[:24]
    ref = embed(model, tok, sentences)
    assert torch.allclose(ref.norm(dim=-1), torch.ones(len(sentences)))
    same = embedding_quality(None, model, tok, sentences, reference=ref)
    assert same.mean_cosine == pytest.approx(1.0, abs=1e-9) and same.spearman == pytest.approx(1.0, abs=1e-9)
    q8 = embedding_quality(None, _quantized_copy(model, UniformQuant(bits=8)), tok, sentences, reference=ref)
    assert q8.mean_cosine > 0.9995 and q8.min_cosine > 0.999 and q8.spearman > 0.995
    q3 = embedding_quality(None, _quantized_copy(model, UniformQuant(bits=3)), tok, sentences, reference=ref)
    assert q3.mean_cosine < q8.mean_cosine and q3.spearman < q8.spearman


def test_minilm_calibration_statistics(minilm_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(str(minilm_path)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_path))
    sentences = load_sentences(SENTENCES)[:12]
    q, v = "encoder.layer.0.attention.self.query.weight", "encoder.layer.5.attention.self.value.weight"
    imp = input_importance(model, tok, sentences, names=[q, v, "encoder.layer.0.attention.self.key.weight"])
    assert imp[q].shape == (384,) and bool((imp[q] > 0).all())
    assert torch.equal(imp[q], imp["encoder.layer.0.attention.self.key.weight"])  # same input
    before = model.get_parameter(v).detach().clone()
    sens = tensor_sensitivity(model, tok, sentences, EntropyCodedQuant(step=0.15), names=[q, v])
    assert torch.equal(model.get_parameter(v), before)  # restored
    assert sens[v] > 5 * sens[q] > 0  # last layer's value projection matters far more than layer 0's query
    with pytest.raises(ValueError, match="not nn.Linear"):
        input_importance(model, tok, sentences, names=["embeddings.word_embeddings.weight"])
