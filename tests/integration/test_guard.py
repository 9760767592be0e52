"""The missing-import trap: without llmcomp-hf a compressed checkpoint must fail loudly, never load garbage."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig

from llmcomp_hf._guard import GUARD_KEY, add_guard, strip_guard
from llmcomp_hf.config import LosslessConfig
from tests.integration.helpers import assert_same_state, read_config, tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    tiny_model("llama", torch.bfloat16).save_pretrained(root / "dense")
    dense = AutoModelForCausalLM.from_pretrained(root / "dense")
    AutoModelForCausalLM.from_pretrained(root / "dense", quantization_config=LosslessConfig()).save_pretrained(root / "llmcomp")
    return dense, root / "llmcomp"


def run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)


def test_saved_config_carries_the_guard(compressed):
    _, folder = compressed
    assert read_config(folder)["fusion_config"] == {GUARD_KEY: False}


def test_without_the_plugin_loading_fails_with_instructions(compressed, tmp_path):
    _, folder = compressed
    proc = run(f"""
        import sys
        from transformers import AutoModelForCausalLM
        try:
            AutoModelForCausalLM.from_pretrained({str(folder)!r})
        finally:
            assert "llmcomp_hf" not in sys.modules
        """, tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "llmcomp-hf" in last and "`import llmcomp_hf`" in last, proc.stderr[-2000:]


def test_import_llmcomp_hf_is_enough_and_cheap(compressed, tmp_path):
    dense, folder = compressed
    proc = run(f"""
        import sys
        import llmcomp_hf
        assert "transformers.quantizers.auto" not in sys.modules, "import llmcomp_hf must not load transformers"
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(folder)!r})
        save_file({{k: v.contiguous() for k, v in model.state_dict().items()
                   if k != "lm_head.weight" or not model.config.tie_word_embeddings}}, "state.safetensors")
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_state(dense.state_dict(), load_file(tmp_path / "state.safetensors"))


def test_guard_keeps_real_fusion_entries():
    cfg = LlamaConfig()
    cfg.fusion_config = {"patch_embeddings": True}
    add_guard(cfg)
    assert cfg.fusion_config == {"patch_embeddings": True, GUARD_KEY: False}
    strip_guard(cfg)
    assert cfg.fusion_config == {"patch_embeddings": True}
    add_guard(cfg := LlamaConfig())
    strip_guard(cfg)
    assert getattr(cfg, "fusion_config", None) is None


def test_dequantize_removes_the_guard(compressed, tmp_path):
    dense, folder = compressed
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.save_pretrained(tmp_path / "again")  # the guard is now on the live config too
    model.dequantize()
    model.save_pretrained(tmp_path / "plain")
    cfg = read_config(tmp_path / "plain")
    assert "quantization_config" not in cfg and "fusion_config" not in cfg
    assert_same_state(dense.state_dict(), AutoModelForCausalLM.from_pretrained(tmp_path / "plain").state_dict())


@pytest.mark.parametrize("first", ["llmcomp_hf._select", "llmcomp_hf.quantizer", "llmcomp_hf.stream.select", "llmcomp_hf.cli"])
def test_registration_survives_any_import_order(compressed, tmp_path, first):
    """Importing one of our modules before transformers.quantizers must not break the registration."""
    _, folder = compressed
    proc = run(f"""
        import warnings
        warnings.simplefilter("error")
        import {first}
        import llmcomp_hf
        from transformers import AutoModelForCausalLM
        from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING
        assert "llmcomp" in AUTO_QUANTIZER_MAPPING
        AutoModelForCausalLM.from_pretrained({str(folder)!r})
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
