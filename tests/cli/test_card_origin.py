"""The card keeps the base model's facts (license, datasets, ...) and names base_model only when it is known."""

from __future__ import annotations

import json
import shutil

import huggingface_hub.constants as constants
import pytest
import torch
from transformers import AutoModelForCausalLM

from llmcomp_hf.card import read_card
from llmcomp_hf.config import LosslessConfig
from tests.cli.helpers import hub_cache, run_cli, tiny_checkpoint

REPO = "tiny-org/tiny-base"
BASE_CARD = """---
license: apache-2.0
language: [en, de]
datasets: [wikitext]
pipeline_tag: text-generation
library_name: transformers
tags: [base-tag]
---
# tiny base
"""
FACTS = {"license": "apache-2.0", "language": ["en", "de"], "datasets": ["wikitext"], "pipeline_tag": "text-generation",
         "library_name": "transformers"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("origin")
    src = tiny_checkpoint(root / "src")
    (src / "README.md").write_text(BASE_CARD)
    return src


@pytest.fixture
def cache(base, tmp_path, monkeypatch):
    """``REPO`` in a Hugging Face cache that is the default one, offline."""
    root = tmp_path / "hub"
    snapshot = hub_cache(root, REPO, base)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root, snapshot


def _facts(folder) -> dict:
    data = read_card(folder).data.to_dict()
    return {k: data.get(k) for k in FACTS}


def test_cli_keeps_the_base_cards_facts_from_a_cache_snapshot(cache, tmp_path, capsys):
    _, snapshot = cache
    rc, _, err = run_cli(capsys, "compress", snapshot, tmp_path / "c", "-q", "--workers", "1")
    assert rc == 0, err
    card = read_card(tmp_path / "c")
    assert _facts(tmp_path / "c") == FACTS and card.data.base_model == REPO
    assert card.data.tags == ["llmcomp", "lossless"]  # the base's own tags describe the base


def test_cli_keeps_sentence_transformers_as_library_but_not_an_unloadable_one(base, tmp_path, capsys):
    for library, expected in (("sentence-transformers", "sentence-transformers"), ("gguf", "transformers")):
        src = shutil.copytree(base, tmp_path / library)
        (src / "README.md").write_text(BASE_CARD.replace("library_name: transformers", f"library_name: {library}"))
        rc, _, err = run_cli(capsys, "compress", src, tmp_path / f"{library}-c", "-q", "--workers", "1")
        assert rc == 0, err
        assert read_card(tmp_path / f"{library}-c").data.library_name == expected


@pytest.mark.parametrize(("name_or_path", "expected"), [
    ("tiny-org/tiny-base", "tiny-org/tiny-base"),  # as transformers 4.x wrote it for a model loaded from the Hub
    ("/home/me/models/tiny", None),  # a local path: no base model is made up
    ("tiny-base", None),  # no org: could as well be a folder name
    (None, None),  # transformers 5.x writes none
])
def test_cli_base_model_from_name_or_path(base, tmp_path, capsys, name_or_path, expected):
    src = shutil.copytree(base, tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    if name_or_path is not None:
        cfg["_name_or_path"] = name_or_path
    (src / "config.json").write_text(json.dumps(cfg))
    rc, _, err = run_cli(capsys, "compress", src, tmp_path / "c", "-q", "--workers", "1")
    assert rc == 0, err
    assert read_card(tmp_path / "c").data.base_model == expected
    assert ("_name_or_path" in err) == (expected is not None)  # said where it came from


def test_save_pretrained_of_a_model_loaded_by_repo_id_keeps_the_facts(cache, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(REPO, quantization_config=LosslessConfig(min_numel=0))
    model.save_pretrained(tmp_path / "out")
    assert read_card(tmp_path / "out").data.base_model == REPO
    assert _facts(tmp_path / "out") == FACTS


def test_save_pretrained_from_a_snapshot_folder_or_name_or_path(cache, base, tmp_path):
    _, snapshot = cache
    model = AutoModelForCausalLM.from_pretrained(snapshot, quantization_config=LosslessConfig(min_numel=0))
    model.save_pretrained(tmp_path / "a")
    assert read_card(tmp_path / "a").data.base_model == REPO and _facts(tmp_path / "a") == FACTS
    src = shutil.copytree(base, tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "_name_or_path": "other-org/other"}))
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=LosslessConfig(min_numel=0))
    model.save_pretrained(tmp_path / "b")
    assert read_card(tmp_path / "b").data.base_model == "other-org/other" and _facts(tmp_path / "b") == FACTS
    # loaded back from the compressed folder and saved again: same base model and facts
    AutoModelForCausalLM.from_pretrained(tmp_path / "b", dtype=torch.bfloat16).save_pretrained(tmp_path / "b2")
    assert read_card(tmp_path / "b2").data.base_model == "other-org/other" and _facts(tmp_path / "b2") == FACTS


def test_save_pretrained_from_a_plain_local_folder_names_no_base_model(base, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=LosslessConfig(min_numel=0))
    model.save_pretrained(tmp_path / "out")
    card = read_card(tmp_path / "out")
    assert card.data.base_model is None and "base_model_relation" not in card.data.to_dict()
    assert _facts(tmp_path / "out") == FACTS


def test_an_llmcomp_repo_loaded_by_id_keeps_its_cards_base_model_or_names_none(base, tmp_path, monkeypatch, capsys):
    rc, _, err = run_cli(capsys, "compress", base, tmp_path / "c", "-q", "--workers", "1", "--base-model", REPO)
    assert rc == 0, err
    root = tmp_path / "hub"
    hub_cache(root, "me/tiny-llmcomp", tmp_path / "c")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    AutoModelForCausalLM.from_pretrained("me/tiny-llmcomp").save_pretrained(tmp_path / "again")
    assert read_card(tmp_path / "again").data.base_model == REPO and _facts(tmp_path / "again") == FACTS
    shutil.rmtree(root)
    (tmp_path / "c" / "README.md").unlink()  # as transformers' download leaves the cache: no README
    hub_cache(root, "me/tiny-llmcomp", tmp_path / "c")
    AutoModelForCausalLM.from_pretrained("me/tiny-llmcomp").save_pretrained(tmp_path / "bare")
    assert read_card(tmp_path / "bare").data.base_model is None  # not the compressed repo itself
