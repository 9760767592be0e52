"""A card another tool wrote (sentence-transformers, a person) keeps its text and gets the llmcomp facts."""

from __future__ import annotations

import shutil

import pytest
from huggingface_hub import ModelCard

from llmcomp_hf.card import CardError, CardStats, read_card, render_card
from llmcomp_hf.card_merge import BEGIN, is_merged, merge_card, unmerge_card
from llmcomp_hf.stream import restore_card
from tests.cli.helpers import compressed_tiny, run_cli, tiny_checkpoint

# YAML and opening text as sentence-transformers' save() writes them (generate_model_card / a reused base card)
ST_CARD = """---
tags:
- sentence-transformers
- sentence-similarity
- feature-extraction
base_model: nreimers/MiniLM-L6-H384-uncased
pipeline_tag: sentence-similarity
library_name: sentence-transformers
---

# SentenceTransformer based on nreimers/MiniLM-L6-H384-uncased

This is a [sentence-transformers](https://www.SBERT.net) model finetuned from nreimers/MiniLM-L6-H384-uncased.

## Usage

```python
# a comment, not a heading
from sentence_transformers import SentenceTransformer
```
"""
STATS = CardStats(original_bytes=1000, compressed_bytes=700, weights=400, weights_stored_bytes=300, tensors=3,
                  compressed_tensors=2, dtypes=["bfloat16"])


def _ours(base_model=None, stats=STATS, **metadata) -> str:
    return render_card(stats, base_model=base_model, repo_id="me/x", metadata=metadata)


def test_sentence_transformers_card_keeps_its_yaml_and_text():
    merged = ModelCard(merge_card(ST_CARD, _ours("sentence-transformers/all-MiniLM-L6-v2", license="apache-2.0")))
    data = merged.data.to_dict()
    assert merged.text.startswith(ModelCard(ST_CARD).text)  # their words first, unchanged
    assert data["library_name"] == "sentence-transformers" and data["pipeline_tag"] == "sentence-similarity"
    assert data["tags"] == ["sentence-transformers", "sentence-similarity", "feature-extraction", "llmcomp", "lossless"]
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and data["base_model_relation"] == "quantized"
    assert data["license"] == "apache-2.0"  # a gap of theirs is filled
    assert data["llmcomp"]["compressed_bytes"] == 700
    section = merged.text.split(BEGIN)[1]
    assert "\n## x (llmcomp, lossless)" in section and "\n### Compression" in section
    assert "# a comment, not a heading" in merged.text  # code blocks are not touched


def test_without_a_known_base_model_theirs_stays():
    data = ModelCard(merge_card(ST_CARD, _ours())).data.to_dict()
    assert data["base_model"] == "nreimers/MiniLM-L6-H384-uncased" and "base_model_relation" not in data


def test_merging_again_replaces_our_section_and_tags():
    once = merge_card(ST_CARD, _ours("org/base"))
    lossy = CardStats(**{**STATS.to_dict(), "stages": ["uniform"]})
    twice = ModelCard(merge_card(once, _ours("org/base", stats=lossy)))
    assert twice.text.count(BEGIN) == 1 and "losslessly" not in twice.text
    assert twice.data.tags == ["sentence-transformers", "sentence-similarity", "feature-extraction", "llmcomp",
                               "lossy", "uniform"]


def test_unmerge_gives_their_card_back():
    back = ModelCard(unmerge_card(merge_card(ST_CARD, _ours("org/base"))))
    original = ModelCard(ST_CARD)
    assert back.text == original.text and back.data.to_dict() == original.data.to_dict()
    assert not is_merged(str(back))


def test_a_single_tag_string_stays_one_tag():
    assert ModelCard(merge_card("---\ntags: mine\n---\nx\n", _ours())).data.tags == ["mine", "llmcomp", "lossless"]


def test_a_card_without_yaml_gets_a_yaml_block():
    merged = ModelCard(merge_card("# notes\nmine\n", _ours("org/base")))
    assert merged.text.startswith("# notes\nmine\n\n" + BEGIN) and merged.data.base_model == "org/base"


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    return compressed_tiny(tmp_path_factory.mktemp("merge"))


def test_restore_card_after_a_foreign_card_was_written_over_ours(compressed, tmp_path):
    folder = shutil.copytree(compressed, tmp_path / "c")
    figures = read_card(folder).data.to_dict()["llmcomp"]
    (folder / "README.md").write_text(ST_CARD)  # what SentenceTransformer.save() does
    restore_card(folder, base_model="org/tiny")
    card = read_card(folder)
    assert card.text.startswith(ModelCard(ST_CARD).text) and card.data.to_dict()["llmcomp"] == figures
    assert card.data.base_model == "org/tiny" and card.data.library_name == "sentence-transformers"
    restore_card(folder)  # again, without naming it: the merged base_model stays, in YAML and words
    card = read_card(folder)
    assert card.data.base_model == "org/tiny" and "This is [org/tiny]" in card.text
    assert card.text.count(BEGIN) == 1


def test_cli_card_merges_and_refuses_a_plain_folder(compressed, tmp_path, capsys):
    folder = shutil.copytree(compressed, tmp_path / "c")
    (folder / "README.md").write_text(ST_CARD)
    rc, out, err = run_cli(capsys, "card", folder, "--base-model", "org/tiny")
    assert rc == 0 and "merged" in out, err
    assert read_card(folder).data.base_model == "org/tiny"
    (folder / "README.md").unlink()
    rc, out, _ = run_cli(capsys, "card", folder)
    assert rc == 0 and "wrote the llmcomp card" in out and read_card(folder).data.tags == ["llmcomp", "lossless"]
    plain = tiny_checkpoint(tmp_path / "plain")
    rc, _, err = run_cli(capsys, "card", plain)
    assert rc == 2 and "config.json" in err and "llmcomp compress" in err
    with pytest.raises(CardError):
        restore_card(plain)


def test_decompress_of_a_merged_folder_gives_their_card(compressed, tmp_path, capsys):
    folder = shutil.copytree(compressed, tmp_path / "c")
    (folder / "README.md").write_text(ST_CARD)
    restore_card(folder)
    rc, _, err = run_cli(capsys, "decompress", folder, tmp_path / "plain", "-q")
    assert rc == 0, err
    back = ModelCard((tmp_path / "plain" / "README.md").read_text())
    assert back.text == ModelCard(ST_CARD).text and "llmcomp" not in back.data.to_dict()
