"""Calibration through the product: `llmcomp calibrate`, CompressionConfig(calibration=...), the
ecq-calibrated preset through the quantizer and `llmcomp compress`, and what config, headers and card record.

A tiny BERT (random weights, MiniLM's tokenizer) keeps it fast; the MiniLM figures are in bench/bench_lossy.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM

from llmcomp_hf.calibration import Calibration, CalibratedPlan, file_info, match_names, read_meta
from llmcomp_hf.cli import main
from llmcomp_hf.config import CompressionConfig
from llmcomp_hf.format.lossy import read_header
from tests.cli.helpers import assert_same_state, state
from tests.integration.helpers import tiny_model

DATA = Path(__file__).resolve().parents[1] / "data" / "sentences.txt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@pytest.fixture(scope="module")
def bert_dir(minilm_dir, tmp_path_factory) -> Path:
    """A 2-layer BERT with random weights and MiniLM's tokenizer, saved as a plain checkpoint."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        vocab_size=30522, max_position_embeddings=128)
    folder = tmp_path_factory.mktemp("tiny-bert") / "bert"
    tf.BertModel(cfg).eval().save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (minilm_dir / name).is_file():
            shutil.copy(minilm_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    lines = DATA.read_text(encoding="utf-8").splitlines()[::12]
    path = tmp_path_factory.mktemp("texts") / "calib.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def calib(bert_dir, texts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("calib") / "calib.safetensors"
    assert main(["calibrate", str(bert_dir), "--texts", str(texts), "-o", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def compressed(bert_dir, calib, tmp_path_factory):
    """(model compressed on load, its save folder, the CLI's output folder) for the ecq-calibrated preset."""
    root = tmp_path_factory.mktemp("calibrated")
    cfg = CompressionConfig.from_preset("ecq-calibrated", calibration=str(calib))
    model = AutoModel.from_pretrained(bert_dir, quantization_config=cfg)
    model.save_pretrained(root / "hf")
    args = ["compress", str(bert_dir), str(root / "cli"), "--config", "ecq-calibrated", "--calibration", str(calib)]
    assert main([*args, "--verify", "-q"]) == 0
    return model, root / "hf", root / "cli"


def test_calibration_file_round_trip(calib, bert_dir, texts):
    data = Calibration.load(calib)
    model = AutoModel.from_pretrained(bert_dir)
    linear = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(data.importance) == set(data.sensitivity) == set(data.shapes) == set(linear)
    for name, module in linear.items():
        assert data.shapes[name] == list(module.weight.shape)
        assert data.importance[name].shape == (module.weight.shape[1],) and bool((data.importance[name] > 0).all())
        assert data.sensitivity[name] >= 0
    n_texts = len([t for t in texts.read_text().splitlines() if t.strip()])
    assert data.meta["texts"] == n_texts and data.meta["tokens"] > n_texts and data.meta["source"]
    info = file_info(calib)
    assert info["sha256"] == hashlib.sha256(calib.read_bytes()).hexdigest() and info["texts"] == n_texts
    again = Calibration.load(data.save(calib.with_name("again.safetensors")))
    assert again.meta == data.meta and again.shapes == data.shapes and again.sensitivity == data.sensitivity
    assert all(torch.equal(again.importance[k], v) for k, v in data.importance.items())


def test_quantizer_and_cli_store_the_same_tensors(compressed, bert_dir):
    model, hf, cli = compressed
    assert_same_state(state(cli), state(hf))
    qc_cli = json.loads((cli / "config.json").read_text())["quantization_config"]
    assert qc_cli == json.loads((hf / "config.json").read_text())["quantization_config"]
    # a reload gives the compress-on-load reconstruction bit for bit
    assert_same_state(model.state_dict(), AutoModel.from_pretrained(hf).state_dict())
    assert_same_state(model.state_dict(), AutoModel.from_pretrained(cli).state_dict())
    stats = model.hf_quantizer.compression_stats()
    assert not stats["lossless"] and stats["tensors"] == 13  # 6 Linear per layer + pooler; embeddings stay plain


def test_steps_are_allocated_and_columns_scaled(compressed, calib):
    _, hf, _ = compressed
    steps = set()
    info = file_info(calib)
    with safe_open(str(next(hf.glob("*.safetensors"))), framework="pt") as handle:
        keys = list(handle.keys())
        for key in (k for k in keys if k.endswith(".llmcomp_transform")):
            header = read_header(key.removesuffix(".llmcomp_transform"), handle.get_tensor(key))
            assert header["calibration"] == {"sha256": info["sha256"], "texts": info["texts"]}
            assert "weight.col_steps" in header["parts"]
            steps.add(header["meta"]["config"]["stages"][0]["step"])
    assert len(keys) and len(steps) > 3  # one step per tensor, from the sensitivities


def test_config_and_card_say_calibrated_and_lossy(compressed, calib):
    _, hf, cli = compressed
    for folder in (hf, cli):
        qc = json.loads((folder / "config.json").read_text())["quantization_config"]
        assert qc["stages"] and qc["calibration"] == str(calib)
        assert qc["calibration_info"] == file_info(calib)
        assert qc["calibration_use"] == {"importance": True, "allocate": True, "max_step": 1.0, "gptq": False,
                                         "rows": False}
        card = ModelCard.load(folder / "README.md")
        data = card.data.to_dict()
        assert "lossy" in data["tags"] and "lossless" not in data["tags"]
        assert data["llmcomp"]["mode"] == "lossy" and data["llmcomp"]["calibration"]["sha256"] == qc["calibration_info"]["sha256"]
        assert "calibrated on" in card.text and "lossless" not in card.text.lower().replace("lossless and", "")


def test_saved_config_loads_without_the_calibration_file(compressed, calib, tmp_path):
    _, hf, _ = compressed
    copy = shutil.copytree(hf, tmp_path / "moved")
    qc = json.loads((copy / "config.json").read_text())["quantization_config"]
    qc["calibration"] = str(tmp_path / "gone.safetensors")
    cfg = CompressionConfig.from_dict(qc)  # recorded info: the file is needed only to compress again
    assert cfg.calibration_info["sha256"] == file_info(calib)["sha256"]
    with pytest.raises(ValueError, match="gone.safetensors.*does not exist.*llmcomp calibrate"):
        cfg.calibrated_plan(["encoder.layer.0.output.dense.weight"])


def _synthetic(path: Path, model: torch.nn.Module) -> Path:
    lin = {f"{n}.weight": m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    torch.manual_seed(1)
    Calibration({k: torch.rand(w.shape[1]) + 0.1 for k, w in lin.items()}, {k: 1.0 + i for i, k in enumerate(lin)},
                {k: list(w.shape) for k, w in lin.items()}, {"source": "synthetic", "texts": 3, "tokens": 30}).save(path)
    return path


def test_config_validation_names_the_file_and_the_fix(tmp_path):
    ecq = [{"transform": "ecq", "step": 0.3}]
    with pytest.raises(ValueError, match=r"nope.safetensors' does not exist; run `llmcomp calibrate"):
        CompressionConfig(stages=ecq, calibration=str(tmp_path / "nope.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"junk.safetensors' is unreadable"):
        CompressionConfig(stages=ecq, calibration=str(tmp_path / "junk.safetensors"))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an llmcomp calibration file"):
        CompressionConfig(stages=ecq, calibration=str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"no calibration file: run `llmcomp calibrate.*--calibration"):
        CompressionConfig.from_preset("ecq-calibrated")
    good = _synthetic(tmp_path / "c.safetensors", tiny_model("llama"))
    with pytest.raises(ValueError, match="calibration applies to lossy stages"):
        CompressionConfig(calibration=str(good))
    with pytest.raises(ValueError, match=r"allocate needs an 'ecq' stage with a step"):
        CompressionConfig(stages=[{"transform": "uniform", "bits": 8}], calibration=str(good))
    with pytest.raises(ValueError, match=r"importance is used by ecq and pruning"):
        CompressionConfig(stages=[{"transform": "uniform", "bits": 8}], calibration=str(good),
                          calibration_use={"allocate": False})
    with pytest.raises(ValueError, match=r"unknown keys \['steps'\]"):
        CompressionConfig(stages=ecq, calibration=str(good), calibration_use={"steps": 1})
    cfg = CompressionConfig(stages=ecq, calibration=str(good))
    assert CompressionConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert "calibration" not in CompressionConfig(stages=ecq).to_dict()  # uncalibrated configs unchanged


def test_a_calibration_of_another_model_is_refused(tmp_path):
    good = _synthetic(tmp_path / "gpt2.safetensors", tiny_model("gpt2"))  # GPT-2 uses Conv1D: no Linear matches
    tiny_model("llama").save_pretrained(tmp_path / "llama")
    cfg = CompressionConfig.from_preset("ecq-calibrated", calibration=str(good))
    with pytest.raises(ValueError, match=r"gpt2.safetensors' has no statistics for .* weight.*llmcomp calibrate"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "llama", quantization_config=cfg)
    wrong = Calibration.load(_synthetic(tmp_path / "llama.safetensors", tiny_model("llama")))
    wrong.shapes = {k: [s[0], s[1] + 1] for k, s in wrong.shapes.items()}
    wrong.save(tmp_path / "shapes.safetensors")
    plan = CalibratedPlan(CompressionConfig.from_preset("ecq-calibrated", calibration=str(tmp_path / "shapes.safetensors")),
                          ["model.layers.0.mlp.up_proj.weight"])
    with pytest.raises(Exception, match="made for another model"):
        plan.importance("model.layers.0.mlp.up_proj.weight", (128, 64))


def test_names_match_across_base_model_prefixes():
    known = ["encoder.layer.0.dense.weight", "pooler.dense.weight"]
    got = match_names(["bert.encoder.layer.0.dense.weight", "pooler.dense.weight", "x.weight"], known)
    assert got == {"bert.encoder.layer.0.dense.weight": "encoder.layer.0.dense.weight",
                   "pooler.dense.weight": "pooler.dense.weight", "x.weight": None}


def test_read_meta_checks_the_version(tmp_path):
    path = _synthetic(tmp_path / "c.safetensors", tiny_model("llama"))
    assert read_meta(path)["version"] == 1


def test_error_feedback_preset_matches_between_cli_and_quantizer(bert_dir, texts, tmp_path):
    calib = tmp_path / "calib_h.safetensors"
    args = ["calibrate", str(bert_dir), "--texts", str(texts), "-o", str(calib), "--hessian", "--no-sensitivity", "-q"]
    assert main(args) == 0
    data = Calibration.load(calib)
    assert data.hessian and not data.sensitivity
    assert all(h.shape == (s[1], s[1]) for k, h in data.hessian.items() for s in [data.shapes[k]])
    with pytest.raises(ValueError, match="holds no sensitivity.*calibration_use"):
        AutoModel.from_pretrained(bert_dir, quantization_config=CompressionConfig.from_preset(
            "ecq-gptq", calibration=str(calib)))
    cfg = CompressionConfig.from_preset("ecq-gptq", calibration=str(calib),
                                        calibration_use={"allocate": False, "gptq": True})
    header = _compress_both_ways(cfg, bert_dir, tmp_path)[0]
    assert header["meta"]["stages"]["quantize"]["weight"]["error_feedback"] is True


def _compress_both_ways(cfg, bert_dir, tmp_path):
    """Compress-on-load + save and `llmcomp compress` with ``cfg``: same stored tensors, a reload equal to the
    model in memory; returns the transform headers of the saved weights."""
    model = AutoModel.from_pretrained(bert_dir, quantization_config=cfg)
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "c.yaml").write_text(json.dumps(cfg.to_dict()))
    args = ["compress", str(bert_dir), str(tmp_path / "cli"), "--config", str(tmp_path / "c.yaml"), "--verify", "-q"]
    assert main(args) == 0
    assert_same_state(state(tmp_path / "cli"), state(tmp_path / "hf"))
    assert_same_state(model.state_dict(), AutoModel.from_pretrained(tmp_path / "cli").state_dict())
    with safe_open(str(next((tmp_path / "hf").glob("*.safetensors"))), framework="pt") as handle:
        keys = [k for k in handle.keys() if k.endswith(".llmcomp_transform")]
        return [read_header(k.removesuffix(".llmcomp_transform"), handle.get_tensor(k)) for k in keys]


def test_row_importance_through_calibrate_quantizer_and_cli(bert_dir, texts, calib, tmp_path):
    """`calibrate --rows` stores per-output-channel importance; calibration_use rows: true stores
    per-row steps, identically through the quantizer and `llmcomp compress`; a file without rows is
    refused with the fix."""
    rows_file = tmp_path / "calib_rows.safetensors"
    assert main(["calibrate", str(bert_dir), "--texts", str(texts), "-o", str(rows_file), "--rows", "-q"]) == 0
    data = Calibration.load(rows_file)
    assert set(data.rows) == set(data.shapes)
    for name, r in data.rows.items():
        assert r.shape == (data.shapes[name][0],) and bool(torch.isfinite(r).all()) and bool((r > 0).all())
        assert float(r.double().log().mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(torch.cat(list(data.rows.values())).std()) > 0.05  # rows do differ
    model = AutoModel.from_pretrained(bert_dir)
    assert all(not p.grad_fn and p.grad is None for p in model.parameters())
    use = {"rows": True}
    with pytest.raises(ValueError, match="no output-channel importance.*--rows"):
        AutoModel.from_pretrained(bert_dir, quantization_config=CompressionConfig.from_preset(
            "ecq-calibrated", calibration=str(calib), calibration_use=use))
    cfg = CompressionConfig.from_preset("ecq-calibrated", calibration=str(rows_file), calibration_use=use)
    headers = _compress_both_ways(cfg, bert_dir, tmp_path)
    assert headers and all("weight.row_steps" in h["parts"] and "weight.col_steps" in h["parts"] for h in headers)
    with pytest.raises(ValueError, match="rows.*needs an 'ecq' stage"):
        CompressionConfig.from_preset("lowrank", calibration=str(rows_file), calibration_use={**use, "importance": False,
                                                                                             "allocate": False})
