"""Pushing to the Hub, intercepted at the HfApi boundary: exactly which files and which card go up."""

from __future__ import annotations

import shutil

import pytest
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from llmcomp_hf.hub import push_model
from tests.cli.helpers import FakeHub, compressed_tiny, run_cli

REPO = "me/tiny-llmcomp"


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    return compressed_tiny(tmp_path_factory.mktemp("push"))


def test_cli_push_uploads_the_checkpoint_and_our_card(compressed, tmp_path, monkeypatch, capsys):
    folder = shutil.copytree(compressed, tmp_path / "c")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "junk").write_text("x")
    (folder / ".DS_Store").write_text("x")
    hub = FakeHub(monkeypatch)
    rc, out, err = run_cli(capsys, "push", folder, REPO, "--private", "-q")
    assert rc == 0, err
    assert REPO in out
    assert hub.repos == [{"repo_id": REPO, "private": True, "exist_ok": True}]
    (files,) = hub.commits
    local = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert set(files) == local - {".cache/junk", ".DS_Store"}
    assert {"config.json", "model.safetensors.index.json", "README.md", "tokenizer_config.json"} <= set(files)
    assert sum(name.endswith(".safetensors") for name in files) > 2
    for name, data in files.items():
        if name != "README.md":
            assert data == (folder / name).read_bytes(), name
    card = hub.card()
    assert card.data.base_model == "org/tiny" and card.data.tags == ["llmcomp", "lossless"]
    assert f'from_pretrained("{REPO}")' in card.text and card.data.license == "mit"
    assert card.data.to_dict()["llmcomp"] == ModelCard((compressed / "README.md").read_text()).data.to_dict()["llmcomp"]


def test_cli_push_keeps_a_hand_written_card_and_merges_our_facts(compressed, tmp_path, monkeypatch, capsys):
    folder = shutil.copytree(compressed, tmp_path / "c")
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# my own words\n")
    hub = FakeHub(monkeypatch)
    rc, _, err = run_cli(capsys, "push", folder, REPO, "-q")
    assert rc == 0, err
    card = hub.card()
    assert card.text.startswith("# my own words\n") and f'from_pretrained("{REPO}")' in card.text
    assert card.data.license == "mit" and card.data.base_model is None  # the folder no longer says it: not made up
    assert card.data.tags == ["llmcomp", "lossless"] and "llmcomp" in card.data.to_dict()
    assert hub.repos[0]["private"] is None


def test_cli_push_no_card_uploads_the_card_as_it_is(compressed, tmp_path, monkeypatch, capsys):
    folder = shutil.copytree(compressed, tmp_path / "c")
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# my own words\n")
    hub = FakeHub(monkeypatch)
    rc, _, err = run_cli(capsys, "push", folder, REPO, "-q", "--no-card")
    assert rc == 0, err
    assert hub.commits[0]["README.md"] == b"---\nlicense: mit\n---\n# my own words\n"


def test_cli_push_refuses_a_folder_without_config(tmp_path, monkeypatch, capsys):
    hub = FakeHub(monkeypatch)
    rc, _, err = run_cli(capsys, "push", tmp_path, REPO, "-q")
    assert rc == 2 and "config.json" in err and hub.commits == []


@pytest.fixture(scope="module")
def model(compressed):
    return AutoModelForCausalLM.from_pretrained(compressed)


def test_transformers_push_to_hub_uploads_our_card(model, monkeypatch, tmp_path):
    """transformers 5.x would upload its bare card; a model loaded with llmcomp-hf routes to push_model."""
    hub = FakeHub(monkeypatch, remote_card=None, tmp=tmp_path)
    model.push_to_hub(REPO, commit_message="compressed", private=True)
    (files,) = hub.commits
    shards = [data for name, data in files.items() if name.endswith(".safetensors")]
    assert shards and all(b"llmcomp_data" in data[:200_000] for data in shards)  # the compressed weights go up
    assert hub.repos == [{"repo_id": REPO, "private": True, "exist_ok": True}]
    card = hub.card()
    assert card.data.base_model == "org/tiny" and card.data.tags == ["llmcomp", "lossless"]
    figures = card.data.to_dict()["llmcomp"]
    assert figures["compressed_bytes"] < figures["original_bytes"]
    assert f'from_pretrained("{REPO}")' in card.text


def test_transformers_push_to_hub_refreshes_an_llmcomp_card_already_on_the_hub(model, compressed, monkeypatch, tmp_path):
    ours = (compressed / "README.md").read_text()
    hub = FakeHub(monkeypatch, remote_card=ours, tmp=tmp_path)
    model.push_to_hub(REPO, tags=["extra"])
    card = hub.card()
    assert card.data.base_model == "org/tiny" and card.data.tags == ["llmcomp", "lossless", "extra"]
    assert "llmcomp" in card.data.to_dict() and f'from_pretrained("{REPO}")' in card.text


def test_transformers_push_to_hub_merges_our_facts_into_a_hand_written_hub_card(model, monkeypatch, tmp_path):
    mine = "---\nlicense: mit\n---\n# my own words\n"
    hub = FakeHub(monkeypatch, remote_card=mine, tmp=tmp_path)
    model.push_to_hub(REPO, tags="extra")
    card = hub.card()
    assert card.text.startswith("# my own words\n") and card.text.count("llmcomp-hf: begin") == 1
    assert card.data.tags == ["llmcomp", "lossless", "extra"] and card.data.base_model == "org/tiny"
    assert card.data.license == "mit" and "llmcomp" in card.data.to_dict()


def test_save_pretrained_push_to_hub_uploads_our_card(model, monkeypatch, tmp_path):
    hub = FakeHub(monkeypatch, remote_card=None, tmp=tmp_path)
    model.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id=REPO, commit_message="m")
    (files,) = hub.commits
    assert files["README.md"] == (tmp_path / "out" / "README.md").read_bytes()
    assert ModelCard(files["README.md"].decode()).data.to_dict()["llmcomp"]["compressed_tensors"] > 0


def test_push_model_sends_the_checkpoint_and_our_card_in_one_commit(model, monkeypatch, tmp_path):
    hub = FakeHub(monkeypatch, remote_card=None, tmp=tmp_path)
    push_model(model, REPO, base_model="org/tiny", max_shard_size="100KB")
    (files,) = hub.commits
    assert {"config.json", "model.safetensors.index.json", "README.md"} <= set(files)
    card = hub.card()
    assert card.data.base_model == "org/tiny" and card.data.base_model_relation == "quantized"
    figures = card.data.to_dict()["llmcomp"]
    assert figures["compressed_tensors"] > 0 and figures["compressed_bytes"] < figures["original_bytes"]
    assert f'from_pretrained("{REPO}")' in card.text
