"""Tiny randomly initialised models of several families: compress on load, save, reload, generate.

Random weights are fine here: these tests check plumbing (names, ties, shards, devices), not ratios.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from llmcomp_hf.config import LosslessConfig
from llmcomp_hf.format import load_checkpoint
from tests.integration.helpers import assert_same_state, raw_bits, shard_files, tiny_model

IDS = torch.tensor([[5, 17, 42, 7, 99, 3]])
CFG = LosslessConfig(min_numel=256)
CASES = {  # family, dtype, tied embeddings
    "llama-bf16": ("llama", torch.bfloat16, False),
    "llama-tied-fp32": ("llama", torch.float32, True),
    "qwen2-bf16-tied": ("qwen2", torch.bfloat16, True),
    "gpt2-fp32": ("gpt2", torch.float32, None),
    "t5-bf16": ("t5", torch.bfloat16, None),
}


def auto_class(kind):
    return AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM


def outputs(model, kind):
    """Greedy tokens and the logits of one forward pass."""
    with torch.no_grad():
        if kind == "t5":
            logits = model(input_ids=IDS, decoder_input_ids=IDS[:, :3]).logits
        else:
            logits = model(IDS).logits
        tokens = model.generate(IDS, max_new_tokens=6, do_sample=False, pad_token_id=0)
    return tokens, logits


def assert_same_outputs(a, b, kind):
    (ta, la), (tb, lb) = outputs(a, kind), outputs(b, kind)
    assert torch.equal(ta, tb)
    assert torch.equal(raw_bits(la), raw_bits(lb))


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    """(kind, dense model, folder of its compressed checkpoint), compressed on load then saved."""
    kind, dtype, tie = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    tiny_model(kind, dtype, tie).save_pretrained(root / "dense")
    # The reference is a plain load: non-persistent buffers (rotary inv_freq) are then built the same way.
    dense = auto_class(kind).from_pretrained(root / "dense")
    model = auto_class(kind).from_pretrained(root / "dense", quantization_config=CFG)
    assert_same_outputs(dense, model, kind)  # usable right after compress-on-load
    model.save_pretrained(root / "llmcomp")
    return kind, dense, root / "llmcomp"


def test_reload_is_bit_identical(case):
    kind, dense, folder = case
    model = auto_class(kind).from_pretrained(folder)
    assert_same_state(dense.state_dict(), model.state_dict())
    assert_same_outputs(dense, model, kind)


def test_tied_weights_are_stored_once_and_retied(case):
    kind, dense, folder = case
    tied = dense.all_tied_weights_keys
    keys = set().union(*(safe_open(str(f), "pt").keys() for f in shard_files(folder)))
    for target, source in tied.items():
        assert not any(k.startswith(target) for k in keys), target
        assert any(k.startswith(source) for k in keys), source
    model = auto_class(kind).from_pretrained(folder)
    for target, source in tied.items():
        assert model.get_parameter(target) is model.get_parameter(source)


def test_plain_tensors_and_buffers_stay_plain(case):
    kind, dense, folder = case
    raw = set().union(*(safe_open(str(f), "pt").keys() for f in shard_files(folder)))
    compressed = {k.rsplit(".", 1)[0] for k in raw if k.endswith(".llmcomp_data")}
    assert compressed, "nothing was compressed"
    for name, tensor in dense.state_dict().items():
        if name in compressed:
            assert {f"{name}.llmcomp_{p}" for p in ("data", "index", "header")} <= raw
        elif name not in dense.all_tied_weights_keys:
            assert name in raw, name  # norms, biases, small weights, persistent buffers
    assert_same_state({k: v for k, v in dense.state_dict().items() if k not in dense.all_tied_weights_keys},
                      load_checkpoint(folder))


def test_forced_sharding_round_trips(case, tmp_path):
    kind, dense, folder = case
    model = auto_class(kind).from_pretrained(folder)
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    files = shard_files(tmp_path)
    assert len(files) > 2
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    listed = set()
    for f in files:  # any safetensors reader opens every shard and lists every tensor
        with safe_open(str(f), "pt") as handle:
            listed |= set(handle.keys())
    assert listed == set(index["weight_map"])
    again = auto_class(kind).from_pretrained(tmp_path)
    assert_same_state(dense.state_dict(), again.state_dict())


LLAMAS = ["llama-bf16", "llama-tied-fp32"]


@pytest.mark.parametrize("case", LLAMAS, indirect=True)
@pytest.mark.parametrize("kwargs", [{"device_map": "cpu"}, {"device_map": "auto"}, {"low_cpu_mem_usage": True}],
                         ids=["cpu", "auto", "low_cpu_mem_usage"])
def test_device_maps(case, kwargs):
    kind, dense, folder = case
    model = auto_class(kind).from_pretrained(folder, **kwargs)
    assert_same_state(dense.state_dict(), model.state_dict())


@pytest.mark.parametrize("case", LLAMAS, indirect=True)
@pytest.mark.filterwarnings("ignore:Attempting to save a model with offloaded modules")
def test_disk_offload_load_and_resave(case, tmp_path):
    kind, dense, folder = case
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = auto_class(kind).from_pretrained(folder, device_map=device_map, offload_folder=tmp_path / "offload")
    assert model.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    assert_same_outputs(dense, model, kind)
    model.save_pretrained(tmp_path / "resaved")
    assert_same_state(dense.state_dict(), auto_class(kind).from_pretrained(tmp_path / "resaved").state_dict())


@pytest.mark.parametrize("case", ["gpt2-fp32"], indirect=True)
def test_compress_on_load_with_device_map_auto(case, tmp_path):
    kind, dense, folder = case
    dense_dir = folder.parent / "dense"
    model = auto_class(kind).from_pretrained(dense_dir, device_map="auto", quantization_config=CFG)
    model.save_pretrained(tmp_path / "llmcomp")
    assert_same_state(dense.state_dict(), auto_class(kind).from_pretrained(tmp_path / "llmcomp").state_dict())


@pytest.mark.parametrize("case", ["llama-bf16"], indirect=True)
def test_save_reuses_encodings_unless_the_weight_changed(case, tmp_path):
    kind, dense, folder = case
    model = auto_class(kind).from_pretrained(folder.parent / "dense", quantization_config=CFG)
    kept = dict(model.hf_quantizer.encoded)
    changed, untouched = "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"
    with torch.no_grad():
        model.get_parameter(changed).mul_(2)  # in place: same storage, new version
    model.save_pretrained(tmp_path)
    assert model.hf_quantizer.encoded[untouched] is kept[untouched]
    assert changed not in model.hf_quantizer.encoded  # re-encoded for the save, not kept
    assert_same_state(model.state_dict(), auto_class(kind).from_pretrained(tmp_path).state_dict())
