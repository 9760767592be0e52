"""`llmcomp compress --config <lossy preset>` writes what the transformers integration writes; decompress and
verify of lossy checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM

import llmcomp_hf
from llmcomp_hf.format.shard import transform_base
from tests.cli.helpers import assert_same_state, run_cli, state, tiny_checkpoint, tree_digest


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("lossy-src") / "tiny")


@pytest.fixture(scope="module")
def nf4(src, tmp_path_factory):
    """(SRC digest before, CLI output, integration output) for the nf4 preset."""
    before = tree_digest(src)
    root = tmp_path_factory.mktemp("lossy-dst")
    from llmcomp_hf.cli import main

    assert main(["compress", str(src), str(root / "cli"), "--config", "nf4", "--verify", "--workers", "2", "-q"]) == 0
    config = llmcomp_hf.CompressionConfig.from_preset("nf4")
    AutoModelForCausalLM.from_pretrained(src, quantization_config=config).save_pretrained(root / "hf")
    return before, root / "cli", root / "hf"


def _keys(folder):
    out = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as h:
            out |= set(h.keys())
    return out


def test_cli_output_loads_to_the_integrations_weights(src, nf4):
    before, cli, hf = nf4
    assert tree_digest(src) == before  # SRC only read
    assert_same_state(AutoModelForCausalLM.from_pretrained(cli).state_dict(),
                      AutoModelForCausalLM.from_pretrained(hf).state_dict())
    # same stored tensors, same bytes (only the shard split and in-file order may differ)
    assert _keys(cli) == _keys(hf)
    assert_same_state(state(cli), state(hf))
    qc = json.loads((cli / "config.json").read_text())["quantization_config"]
    assert qc == json.loads((hf / "config.json").read_text())["quantization_config"]
    assert sorted(p.name for p in cli.glob("*.safetensors")) == sorted(p.name for p in src.glob("*.safetensors"))


def test_lossy_card_states_bits_per_weight_and_never_lossless(nf4):
    _, cli, _ = nf4
    card = ModelCard.load(cli / "README.md")
    assert "lossless" not in card.content.lower()
    assert card.data.tags[:2] == ["llmcomp", "lossy"] and card.data.llmcomp["mode"] == "lossy"
    assert 3.0 < card.data.llmcomp["bits_per_weight"] < 6.0
    assert "## Bits per weight by tensor" in card.text and "| model.layers.0.mlp.up_proj.weight | 128x64 |" in card.text
    assert card.data.license == "mit"  # carried over from the source card
    error = card.data.llmcomp["weight_rel_mse"]  # the measured quality of the lossy weights
    assert 0 < error["mean"] <= error["max"] < 0.1 and "measured weight error" in card.text


def test_decompress_gives_what_from_pretrained_gives(nf4, tmp_path, capsys):
    _, cli, _ = nf4
    rc, out, err = run_cli(capsys, "decompress", cli, tmp_path / "dense", "--workers", "2", "-q")
    assert rc == 0, err
    dense = state(tmp_path / "dense")
    assert not any(transform_base(k) or ".llmcomp_" in k for k in dense)
    assert_same_state(dense, AutoModelForCausalLM.from_pretrained(cli).state_dict())
    cfg = json.loads((tmp_path / "dense" / "config.json").read_text())
    assert "quantization_config" not in cfg and "fusion_config" not in cfg
    assert cfg["llmcomp_reconstruction"]["stages"] == ["nf4"]
    card = ModelCard.load(tmp_path / "dense" / "README.md")
    assert "reconstruction" in card.data.tags and "not the original weights" in card.text
    assert "lossless" not in card.text.lower()
    # and it loads as an ordinary model, without llmcomp
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "dense").state_dict()
    assert_same_state(reloaded, dense)


def test_verify_catches_a_reconstruction_that_changed(src, tmp_path, capsys, monkeypatch):
    import llmcomp_hf.stream.lossy as lossy

    real = lossy._compress
    monkeypatch.setattr(lossy, "_compress", lambda *a: (real(*a)[0], "0" * 64))
    rc, _, err = run_cli(capsys, "compress", src, tmp_path / "bad", "--config", "int8", "--verify", "-q")
    assert rc == 1 and "reconstruction differs" in err and "tensor 'model." in err
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.*"))


def test_stages_that_do_not_fit_name_tensor_and_file(src, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(json.dumps({"stages": [{"transform": "nm_prune", "n": 2, "m": 3}]}))
    rc, _, err = run_cli(capsys, "compress", src, tmp_path / "x", "--config", tmp_path / "bad.yaml", "-q")
    assert rc == 2, err
    assert "NMPrune(2:3)" in err and "tensor 'model." in err and ".safetensors" in err
    assert not (tmp_path / "x").exists()


def test_unknown_config_name_is_a_usage_error(src, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "compress", src, tmp_path / "x", "--config", "no-such-preset")
    assert rc == 2 and "no-such-preset" in err and "nf4" in err


@pytest.mark.slow  # ~35 s on the shared 2-core machine: the integration side runs nf4 through from_pretrained
def test_minilm_nf4_matches_the_integration(minilm_dir, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "compress", minilm_dir, tmp_path / "cli", "--config", "nf4", "-q")
    assert rc == 0, err
    config = llmcomp_hf.CompressionConfig.from_preset("nf4")
    AutoModel.from_pretrained(minilm_dir, quantization_config=config).save_pretrained(tmp_path / "hf")
    a, b = AutoModel.from_pretrained(tmp_path / "cli").state_dict(), AutoModel.from_pretrained(tmp_path / "hf").state_dict()
    assert_same_state(a, b)
    assert sum(k.endswith(".llmcomp_transform") for k in _keys(tmp_path / "cli")) == 39
    assert torch.equal(a["encoder.layer.0.attention.self.query.weight"], b["encoder.layer.0.attention.self.query.weight"])
