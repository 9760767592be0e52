"""Model cards: YAML that huggingface_hub parses, exact figures, lossy never called lossless, a working snippet."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard

from llmcomp_hf.card import (
    CardStats,
    card_tags,
    render_card,
    stage_names,
    stats_from_encoded,
    write_card,
)
from llmcomp_hf.codec import encode
from llmcomp_hf.errors import LlmcompError

STATS = CardStats(original_bytes=90_856_960, compressed_bytes=60_123_456, weights=22_000_000,
                  weights_stored_bytes=29_000_000, tensors=104, compressed_tensors=39, dtypes=["bfloat16"])


def _snippet(text: str) -> str:
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_lossless_card_parses_with_exact_figures():
    text = render_card(STATS, base_model="sentence-transformers/all-MiniLM-L6-v2", repo_id="me/minilm-llmcomp",
                       metadata={"license": "apache-2.0", "pipeline_tag": "sentence-similarity", "widget": [1]})
    card = ModelCard(text)
    data = card.data.to_dict()
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert data["base_model_relation"] == "quantized" and data["library_name"] == "transformers"
    assert data["tags"] == ["llmcomp", "lossless"]
    assert data["license"] == "apache-2.0" and data["pipeline_tag"] == "sentence-similarity" and "widget" not in data
    figures = data["llmcomp"]
    assert figures == {
        "format_version": 1, "coder": "huffman", "mode": "lossless", "original_bytes": 90_856_960,
        "compressed_bytes": 60_123_456, "ratio": round(60_123_456 / 90_856_960, 4),
        "bits_per_weight": round(8 * 29_000_000 / 22_000_000, 3), "compressed_tensors": 39, "tensors": 104,
    }
    assert "90,856,960" in card.text and "losslessly" in card.text
    code = _snippet(text)
    assert "import llmcomp_hf" in code and 'AutoModel.from_pretrained("me/minilm-llmcomp")' in code


def test_lossy_card_never_says_lossless():
    stages = [{"transform": "pipeline", "version": 1,
               "stages": [{"transform": "nm_prune", "n": 2, "m": 4}, {"transform": "uniform", "bits": 4}]}]
    stats = CardStats(**{**STATS.to_dict(), "stages": stage_names(stages)})
    assert stats.stages == ["nm_prune", "uniform"] and not stats.lossless
    text = render_card(stats, base_model="org/base", repo_id="me/x")
    assert "lossless" not in text.lower()
    card = ModelCard(text)
    assert card.data.tags == ["llmcomp", "lossy", "nm_prune", "uniform"] == card_tags(stats)
    assert card.data.to_dict()["llmcomp"]["stages"] == ["nm_prune", "uniform"]
    assert "**lossy**" in card.text and "nm_prune → uniform" in card.text


def test_no_base_model_gives_no_relation():
    data = ModelCard(render_card(STATS)).data.to_dict()
    assert "base_model" not in data and "base_model_relation" not in data


def test_write_card_accepts_the_quantizer_stats_mapping(tmp_path):
    stats = {"tensors": 3, "original_bytes": 1000, "stored_bytes": 700, "ratio": 0.7}
    path = write_card(tmp_path, stats, base_model="org/base")
    figures = ModelCard(path.read_text()).data.to_dict()["llmcomp"]
    assert (figures["original_bytes"], figures["compressed_bytes"], figures["compressed_tensors"]) == (1000, 700, 3)
    with pytest.raises(LlmcompError, match="original_bytes"):
        write_card(tmp_path, {"ratio": 0.5})


def test_stats_from_encoded_counts_every_byte():
    encs = [encode((torch.randn(128, 64) * 0.02).to(torch.bfloat16)) for _ in range(3)]
    stats = stats_from_encoded(encs, plain_bytes=512, plain_tensors=2, config={"coder": "huffman", "stages": []})
    stored = sum(e.nbytes for e in encs)
    assert stats.original_bytes == 3 * 128 * 64 * 2 + 512 and stats.compressed_bytes == stored + 512
    assert stats.bits_per_weight == pytest.approx(8 * stored / (3 * 128 * 64))
    assert (stats.tensors, stats.compressed_tensors, stats.dtypes) == (5, 3, ["bfloat16"])


def test_usage_snippet_runs(tmp_path):
    """The card's Python snippet, run as written in a fresh interpreter, loads the compressed model."""
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, llmcomp_hf; from llmcomp_hf._register import _PostImportHook; "
         "print(any(isinstance(f, _PostImportHook) for f in sys.meta_path))"],
        capture_output=True, text=True, timeout=120,
    )
    if probe.stdout.strip() != "True":
        pytest.xfail("`import llmcomp_hf` does not register the quantizer yet: llmcomp_hf/__init__.py must call "
                     "llmcomp_hf._register.install()")
    from llmcomp_hf.cli import main
    from tests.cli.helpers import tiny_checkpoint

    src = tiny_checkpoint(tmp_path / "src", shard="10MB")
    assert main(["compress", str(src), str(tmp_path / "c"), "-q", "--workers", "1"]) == 0
    text = render_card(STATS, repo_id=str(tmp_path / "c"))
    code = _snippet(text) + "\nprint(type(model.config.quantization_config).__name__)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("LosslessConfig")
