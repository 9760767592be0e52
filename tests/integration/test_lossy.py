"""Lossy stages through the quantizer and the shards: every preset on MiniLM, plus a tiny Llama.

Only the first two MiniLM encoder layers are compressed (12 Linear weights) to keep the run short.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

import llmcomp_hf
from llmcomp_hf.config import CompressionConfig, LosslessConfig
from llmcomp_hf.errors import FormatError, LlmcompError
from llmcomp_hf.format import decode_tensors, load_checkpoint
from llmcomp_hf.format.lossy import read_header
from llmcomp_hf.presets import preset_names
from tests.integration.helpers import assert_same_state, read_config, shard_files, tiny_model

DATA = Path(__file__).resolve().parents[1] / "data" / "sentences.txt"
SKIP = [f"encoder.layer.{i}" for i in range(2, 6)] + ["embeddings", "pooler"]
# preset -> (min cosine of mean-pooled embeddings vs fp32, max bits/weight); dense fp32 is 32 bits
EXPECT = {
    "int8": (0.999, 8.5),
    "ecq4": (0.97, 5.0),
    "nf4": (0.97, 5.0),
    "lowrank": (0.95, 7.0),
    "pruned": (0.75, 6.0),
}


def _sentences() -> list[str]:
    lines = [s.strip() for s in DATA.read_text(encoding="utf-8").splitlines() if s.strip()]
    return lines[:6]


def _embed(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(_sentences(), padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


@pytest.fixture(scope="module")
def dense_embeddings(minilm_dir) -> torch.Tensor:
    return _embed(AutoModel.from_pretrained(minilm_dir), AutoTokenizer.from_pretrained(minilm_dir))


@pytest.fixture(scope="module", params=sorted(EXPECT))
def saved(request, minilm_dir, tmp_path_factory):
    """(preset, model compressed on load, folder it was saved to)."""
    cfg = CompressionConfig.from_preset(request.param, modules_to_not_convert=SKIP)
    model = AutoModel.from_pretrained(minilm_dir, quantization_config=cfg)
    out = tmp_path_factory.mktemp(f"lossy_{request.param}")
    model.save_pretrained(out)
    return request.param, model, out


def test_reload_is_bit_identical_to_the_model_in_memory(saved):
    _, model, out = saved
    reloaded = AutoModel.from_pretrained(out)
    assert_same_state(model.state_dict(), reloaded.state_dict())
    assert_same_state(model.state_dict(), load_checkpoint(out))  # the reader without transformers agrees


def test_quality_and_rate(saved, minilm_dir, dense_embeddings):
    name, model, out = saved
    min_cos, max_bits = EXPECT[name]
    got = _embed(model, AutoTokenizer.from_pretrained(minilm_dir))
    cos = torch.nn.functional.cosine_similarity(got, dense_embeddings)
    assert float(cos.min()) > min_cos, (name, cos)
    stats = model.hf_quantizer.compression_stats()
    assert stats["tensors"] == 12 and not stats["lossless"]
    assert stats["bits_per_weight"] < min(32.0, max_bits), stats
    # each transform header records the same effective rate as the quantizer, everything counted
    (shard,) = shard_files(out)
    bits = model.hf_quantizer.tensor_bits()
    with safe_open(str(shard), framework="pt") as handle:
        keys = list(handle.keys())
        for key in (k for k in keys if k.endswith(".llmcomp_transform")):
            weight = key.removesuffix(".llmcomp_transform")
            header = read_header(weight, handle.get_tensor(key))
            assert header["bits_per_weight"] == pytest.approx(bits[weight], abs=1e-3)
            assert header["dtype"] == "float32" and header["stored_bytes"] * 8 / (384 * 384) > 0
    assert len([k for k in keys if k.endswith(".llmcomp_transform")]) == 12
    assert "encoder.layer.0.attention.self.query.weight" not in keys  # stored only as parts
    assert "encoder.layer.3.attention.self.query.weight" in keys  # excluded: plain


def test_saved_config_says_lossy(saved):
    name, model, out = saved
    qc = read_config(out)["quantization_config"]
    assert qc["quant_method"] == "llmcomp" and qc["stages"]
    assert CompressionConfig.from_dict(qc) == CompressionConfig.from_preset(name, modules_to_not_convert=SKIP)
    for cfg in (model.config.quantization_config, AutoModel.from_pretrained(out).config.quantization_config):
        assert isinstance(cfg, CompressionConfig) and not isinstance(cfg, LosslessConfig)
        assert cfg.is_lossless is False


def test_resaving_a_lossy_checkpoint_writes_the_same_tensors(saved, tmp_path):
    _, _, out = saved
    AutoModel.from_pretrained(out).save_pretrained(tmp_path)  # stored parts kept, never re-quantized
    (a,), (b,) = shard_files(out), shard_files(tmp_path)
    assert_same_state(load_file(a), load_file(b))


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_round_trips_through_config_json(name, tmp_path):
    calibrated = "calibration_use" in Path(f"configs/{name}.yaml").read_text()
    overrides = {"calibration": str(_calibration_file(tmp_path))} if calibrated else {}
    cfg = CompressionConfig.from_preset(name, **overrides)
    again = CompressionConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and type(again) is type(cfg)
    assert cfg.is_lossless == (name == "lossless") == isinstance(cfg, LosslessConfig)
    assert Path(f"configs/{name}.yaml").read_text().startswith(f"# {name}: ")
    assert {"lossless", "int8", "ecq4", "nf4", "lowrank", "pruned"} <= set(preset_names())


def _calibration_file(folder: Path) -> Path:
    from llmcomp_hf.calibration import Calibration

    return Calibration({"w": torch.ones(4)}, {"w": 1.0}, {"w": [2, 4]}, {"texts": 1}).save(folder / "c.safetensors")


@pytest.mark.parametrize(
    "stages, match",
    [
        ([{"transform": "uniform", "bits": 1}], r"stages\[0\].*UniformQuant.bits"),
        ([{"transform": "uniform", "bits": 8, "importance": [1.0]}], r"stages\[0\].*calibration"),
        ([{"transform": "ecq", "allocate_steps": True}], r"stages\[0\].*calibration"),
        ([{"transform": "zstd"}], r"stages\[0\].*unknown transform"),
        ([{"transform": "uniform"}, {"transform": "nm_prune"}], r"stages.*order prune -> lowrank -> quantize"),
        ([{"transform": "nm_prune"}, {"transform": "kmeans"}], r"stages.*pruned zeros.*zero_level=True"),
        ({"transform": "uniform"}, r"stages must be a list"),
        (["int8"], r"stages\[0\] must be a transform config dict"),
    ],
)
def test_invalid_stages_name_the_field_and_fix(stages, match):
    with pytest.raises(ValueError, match=match):
        CompressionConfig(stages=stages)


def test_lossless_config_refuses_stages_and_unknown_presets():
    with pytest.raises(ValueError, match=re.escape("LosslessConfig.stages must be empty")):
        LosslessConfig(stages=[{"transform": "uniform"}])
    with pytest.raises(ValueError, match="unknown llmcomp preset 'int3'.*from_yaml"):
        CompressionConfig.from_preset("int3")
    with pytest.raises(ValueError, match=r"dtypes \['int8'\] cannot take lossy stages"):
        CompressionConfig(stages=[{"transform": "uniform"}], dtypes=["float32", "int8"])


def test_from_yaml_reads_top_level_or_quantization_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("quantization_config:\n  coder: rans\n  stages:\n    - {transform: nf4, group_size: 32}\n")
    cfg = CompressionConfig.from_yaml(path)
    assert cfg.coder == "rans" and cfg.stages[0]["group_size"] == 32 and not cfg.is_lossless
    path.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        CompressionConfig.from_yaml(path)


def test_tiny_llama_int8_round_trip(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "dense")
    cfg = CompressionConfig.from_preset("int8")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", quantization_config=cfg)
    assert model.hf_quantizer.compression_stats()["tensors"] > 0
    model.save_pretrained(tmp_path / "int8")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "int8")
    assert_same_state(model.state_dict(), reloaded.state_dict())
    ids = torch.tensor([[1, 5, 9, 42]])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)


def test_stages_that_do_not_fit_a_weight_name_it(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    cfg = CompressionConfig(stages=[{"transform": "nm_prune", "n": 2, "m": 3}, {"transform": "uniform"}])
    with pytest.raises(LlmcompError, match=r"lossy stages \(tensor '.*weight'\).*modules_to_not_convert"):
        AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=cfg)


def test_lossy_weights_are_never_kept_encoded_in_memory(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "dense")
    cfg = CompressionConfig.from_preset("nf4")
    with llmcomp_hf.load_options(decode="on_the_fly"), pytest.raises(LlmcompError, match="without llmcomp_hf.load_opt"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "dense", quantization_config=cfg)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", quantization_config=cfg)
    model.save_pretrained(tmp_path / "nf4")
    with llmcomp_hf.load_options(decode="on_the_fly"), pytest.raises(FormatError, match="holds lossy weights"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "nf4")
    # the reader refuses a lossy weight with a missing part, naming it
    tensors = load_file(shard_files(tmp_path / "nf4")[0])
    victim = next(k for k in tensors if k.endswith(".weight.codes.llmcomp_data"))
    del tensors[victim]
    with pytest.raises(FormatError, match="missing .*weight.codes"):
        decode_tensors(tensors)
