"""sentence-transformers' save() writes its own README.md over ours; restore_card merges our facts back."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from llmcomp_hf.card import read_card
from llmcomp_hf.stream import restore_card
from llmcomp_hf.config import LosslessConfig

st = pytest.importorskip("sentence_transformers")  # an optional third-party library, not package code


def test_restore_card_after_sentence_transformers_save(minilm_dir, tmp_path):
    options = {"quantization_config": LosslessConfig()}
    model = st.SentenceTransformer(str(minilm_dir), device="cpu", model_kwargs=options)
    model.save(str(tmp_path / "st"))
    theirs = (tmp_path / "st" / "README.md").read_text(encoding="utf-8")
    assert "llmcomp" not in ModelCard(theirs).data.to_dict()  # what save() leaves: our card is gone
    restore_card(tmp_path / "st", base_model="sentence-transformers/all-MiniLM-L6-v2")
    card = read_card(tmp_path / "st")
    data = card.data.to_dict()
    assert card.text.startswith(ModelCard(theirs).text)  # their card text, unchanged
    assert data["library_name"] == "sentence-transformers" and data["pipeline_tag"] == "sentence-similarity"
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and data["base_model_relation"] == "quantized"
    assert {"sentence-transformers", "llmcomp", "lossless"} <= set(data["tags"])
    assert data["llmcomp"]["compressed_tensors"] == 39 and data["license"] == "apache-2.0"
    again = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")  # still loads, compressed
    assert type(again[0].auto_model.config.quantization_config).__name__ == "LosslessConfig"
