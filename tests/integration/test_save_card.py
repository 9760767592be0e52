"""save_pretrained of a model loaded with llmcomp-hf writes the llmcomp card next to the shards."""

from __future__ import annotations

import logging

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import llmcomp_hf

from .helpers import raw_bits, read_config, shard_files, tiny_model


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    folder = tmp_path_factory.mktemp("card") / "dense"
    tiny_model("llama", torch.bfloat16).save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# tiny\n")
    return folder


def _card(folder) -> ModelCard:
    return ModelCard((folder / "README.md").read_text(encoding="utf-8"))


def _tensor_bytes(folder) -> int:
    total = 0
    for file in shard_files(folder):
        with safe_open(file, "pt") as f:
            total += sum(f.get_tensor(k).nbytes for k in f.keys())
    return total


def test_lossless_save_writes_a_card_with_the_saved_figures(dense, tmp_path) -> None:
    model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=llmcomp_hf.LosslessConfig(min_numel=0))
    model.save_pretrained(tmp_path / "out", max_shard_size="200KB")
    card = _card(tmp_path / "out")
    figures = card.data.to_dict()["llmcomp"]
    assert card.data.tags == ["llmcomp", "lossless"] and card.data.license == "apache-2.0"  # carried from the source
    assert figures["compressed_tensors"] == sum(1 for _ in model.hf_quantizer.encoded) > 0
    assert 0 < figures["compressed_bytes"] < figures["original_bytes"]
    assert figures["compressed_bytes"] == _tensor_bytes(tmp_path / "out")  # everything stored, counted
    assert "lossless" in card.text and "lossy" not in card.text.lower()
    # reloaded and saved again: the card is re-rendered, same figures
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    again.save_pretrained(tmp_path / "again")
    assert _card(tmp_path / "again").data.to_dict()["llmcomp"] == figures


def test_lossy_save_card_never_says_lossless(dense, tmp_path) -> None:
    cfg = llmcomp_hf.CompressionConfig.from_preset("int8", min_numel=0)
    model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=cfg)
    model.save_pretrained(tmp_path / "out")
    card = _card(tmp_path / "out")
    assert card.data.tags[:2] == ["llmcomp", "lossy"] and "lossless" not in card.text.lower()
    figures = card.data.to_dict()["llmcomp"]
    held = model.hf_quantizer.compression_stats()
    assert figures["bits_per_weight"] == round(held["bits_per_weight"], 3) < 9  # parts folded into their weights
    assert figures["compressed_tensors"] == held["tensors"]
    from llmcomp_hf.stream.check import inspect_checkpoint

    rows = {r.name: r for r in inspect_checkpoint(tmp_path / "out", bound=False).rows}
    assert not any("llmcomp" in name for name in rows)  # one logical row per lossy weight
    assert rows["lm_head.weight"].shape == [1000, 64] and rows["lm_head.weight"].stages == ["uniform"]
    errors = [lw.header["rel_mse"] for lw in model.hf_quantizer.lossy.values()]
    assert 0 < figures["weight_rel_mse"]["max"] == pytest.approx(max(errors), rel=1e-3)  # the measured quality
    assert "measured weight error" in card.text


def test_a_hand_written_card_in_the_target_keeps_its_text_and_gets_our_facts(dense, tmp_path, caplog) -> None:
    model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=llmcomp_hf.LosslessConfig(min_numel=0))
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("---\nlicense: other\ntags: [mine]\n---\n# my notes\n")
    with caplog.at_level(logging.INFO, logger="llmcomp_hf"):
        model.save_pretrained(out)
        model.save_pretrained(out)  # twice: our section is replaced, not repeated
    card = _card(out)
    assert card.text.startswith("# my notes\n") and card.text.count("llmcomp-hf: begin") == 1
    assert card.data.license == "other"  # theirs wins over the source's apache-2.0
    assert card.data.tags == ["mine", "llmcomp", "lossless"] and card.data.language == "en"
    assert card.data.to_dict()["llmcomp"]["compressed_bytes"] == _tensor_bytes(out)
    assert "## Compression" not in card.text.split("# my notes")[0] and "### Compression" in card.text
    assert "merged the llmcomp facts" in caplog.text and "README.md" in caplog.text


def test_a_card_with_broken_yaml_is_left_alone_with_a_warning(dense, tmp_path, caplog) -> None:
    model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=llmcomp_hf.LosslessConfig(min_numel=0))
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_bytes(b"---\nlicense: [mit\n---\n# notes\n")
    with caplog.at_level(logging.WARNING, logger="llmcomp_hf"):
        model.save_pretrained(out)
    assert (out / "README.md").read_bytes() == b"---\nlicense: [mit\n---\n# notes\n"
    assert "llmcomp card" in caplog.text and "YAML" in caplog.text


def test_no_card_on_other_ranks_or_after_dequantize(dense, tmp_path) -> None:
    model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=llmcomp_hf.LosslessConfig(min_numel=0))
    model.save_pretrained(tmp_path / "rank1", is_main_process=False)
    assert not (tmp_path / "rank1" / "README.md").exists()
    from transformers import LlamaForCausalLM

    assert type(model).__name__ == "LlamaForCausalLM" and isinstance(model, LlamaForCausalLM)
    model.save_pretrained(tmp_path / "main")
    assert read_config(tmp_path / "main")["architectures"] == ["LlamaForCausalLM"]
    model.dequantize()
    assert type(model) is LlamaForCausalLM
    model.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / "README.md").exists()


def test_chained_save_pickling_and_copies_keep_working(dense, tmp_path) -> None:
    import copy
    import pickle

    from transformers import LlamaForCausalLM

    cfg = llmcomp_hf.LosslessConfig(min_numel=0)
    AutoModelForCausalLM.from_pretrained(dense, quantization_config=cfg).save_pretrained(tmp_path / "chained")
    assert (tmp_path / "chained" / "README.md").is_file()
    model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=cfg)
    clone = pickle.loads(pickle.dumps(model))
    assert type(clone) is LlamaForCausalLM  # a pickle names the model's own class
    assert torch.equal(raw_bits(clone.lm_head.weight), raw_bits(model.lm_head.weight))
    twin = copy.deepcopy(model)
    assert type(twin).__name__ == "LlamaForCausalLM"


def test_the_wrapped_model_is_freed_without_the_cycle_collector(dense) -> None:
    import gc
    import weakref

    model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=llmcomp_hf.LosslessConfig(min_numel=0))
    assert getattr(type(model), "_llmcomp_wrapped", False)
    ref = weakref.ref(model)
    gc.disable()
    try:
        del model
        assert ref() is None  # a bound method on the instance would keep it alive in a cycle
    finally:
        gc.enable()


def test_a_plain_model_of_the_hooked_class_gets_no_card(dense, tmp_path) -> None:
    model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=llmcomp_hf.LosslessConfig(min_numel=0))
    plain = type(model).from_pretrained(dense)  # the same-named subclass, loaded without llmcomp
    plain.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / "README.md").exists()
