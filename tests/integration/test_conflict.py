"""from_pretrained of an llmcomp checkpoint with another quantization config says how to get there."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from llmcomp_hf._conflict import QuantizationConflictError
from llmcomp_hf.config import CompressionConfig, LosslessConfig
from tests.integration.helpers import tiny_model


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    root = tmp_path_factory.mktemp("conflict")
    tiny_model("llama", torch.bfloat16).save_pretrained(root / "dense")
    model = AutoModelForCausalLM.from_pretrained(root / "dense", quantization_config=LosslessConfig(min_numel=256))
    model.save_pretrained(root / "llmcomp")
    return root / "llmcomp"


@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_on_a_compressed_checkpoint_names_the_two_ways(compressed, bits):
    bnb = BitsAndBytesConfig(load_in_8bit=bits == 8, load_in_4bit=bits == 4)
    with pytest.raises(QuantizationConflictError) as info:
        AutoModelForCausalLM.from_pretrained(compressed, quantization_config=bnb)
    message = str(info.value)
    assert isinstance(info.value, ValueError)  # what transformers raised before: callers catching it still do
    assert "BitsAndBytesConfig" in message and "LosslessConfig" in message
    assert "llmcomp decompress SRC DST" in message and "model.dequantize()" in message


def test_a_config_dict_gets_the_hint_too(compressed):
    with pytest.raises(QuantizationConflictError, match="quant_method 'bitsandbytes'.*llmcomp decompress"):
        AutoModelForCausalLM.from_pretrained(compressed, quantization_config={"quant_method": "bitsandbytes",
                                                                              "load_in_8bit": True})


def test_another_llmcomp_config_says_load_it_as_it_is(compressed):
    lossy = CompressionConfig.from_preset("int8")
    with pytest.raises(QuantizationConflictError, match="without quantization_config"):
        AutoModelForCausalLM.from_pretrained(compressed, quantization_config=lossy)


def test_the_same_config_class_still_loads(compressed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers: "the quantization_config from the model will be used"
        model = AutoModelForCausalLM.from_pretrained(compressed, quantization_config=LosslessConfig(coder="rans"))
    assert model.config.quantization_config.coder == "huffman"


def test_from_dict_outside_from_pretrained_is_unaffected():
    assert isinstance(CompressionConfig.from_dict({"quant_method": "llmcomp"}), LosslessConfig)


def test_both_ways_the_hint_names_work(compressed, tmp_path):
    from llmcomp_hf.cli import main

    assert main(["decompress", str(compressed), str(tmp_path / "plain"), "-q"]) == 0
    model = AutoModelForCausalLM.from_pretrained(compressed)
    model.dequantize()
    model.save_pretrained(tmp_path / "dequantized")
    for folder in ("plain", "dequantized"):
        int8 = BitsAndBytesConfig(load_in_8bit=True)
        bnb = AutoModelForCausalLM.from_pretrained(tmp_path / folder, quantization_config=int8)
        assert type(bnb.model.layers[0].mlp.down_proj).__name__ == "Linear8bitLt"
