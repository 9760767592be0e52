"""The load/save matrix: architectures x decode modes x operations, each cell bit-identical or a named error.

Every cell walks one model through what users do: compress on load, forward, ``generate``, save,
reload, re-save, edit a weight then save, ``dequantize`` then save, ``push_to_hub`` (HTTP boundary
faked), and loads from shards so small that a weight's parts lie in different files. Tiny random
models (built from configs) keep it fast: this checks plumbing (names, renames, ties, expert merges,
module swaps), not ratios. A new load or save path gets a column or a row here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import llmcomp_hf
from llmcomp_hf.compressed_fused import CompressedFused
from llmcomp_hf.config import LosslessConfig
from llmcomp_hf.modules import CompressedConv1D, CompressedEmbedding, CompressedLinear, EncodedWeight
from tests.cli.helpers import FakeHub
from tests.integration.helpers import assert_same_state, raw_bits, tiny_model

CFG = LosslessConfig(min_numel=256)
ARCHS = {  # name: (family, tied embeddings)
    "llama": ("llama", False),
    "llama-tied": ("llama", True),
    "qwen2": ("qwen2", False),
    "gpt2": ("gpt2", None),
    "t5": ("t5", None),
    "bert": ("bert", None),
    "whisper": ("whisper", None),
    "vit": ("vit", None),
    "llava": ("llava", None),
    "mixtral": ("mixtral", False),
}
MODES = ("load", "on_the_fly")
# on the fly, every compressed weight stays encoded (tied copies read their source's, MoE experts merge per
# forward); whisper's decoder positions (WhisperPositionalEmbedding slices its table) are decoded at load
ALL_KEPT_ON_THE_FLY = {"llama", "llama-tied", "qwen2", "gpt2", "t5", "bert", "vit", "llava", "mixtral"}
GENERATES = {"llama", "qwen2", "gpt2", "t5", "whisper", "mixtral", "llava"}
COMPRESSED_TYPES = (CompressedLinear, CompressedConv1D, CompressedEmbedding, CompressedFused)


def inputs(family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    if family == "t5":
        return {"input_ids": ids, "decoder_input_ids": ids[:, :3]}
    if family == "whisper":
        return {"input_features": torch.randn(1, 16, 64, generator=g), "decoder_input_ids": torch.tensor([[1, 5, 7]])}
    if family == "vit":
        return {"pixel_values": torch.randn(1, 3, 32, 32, generator=g)}
    if family == "llava":
        return {"input_ids": torch.cat([torch.full((1, 17), 999), ids], 1), "pixel_values": torch.randn(1, 3, 32, 32, generator=g)}
    return {"input_ids": ids}


def outputs(model, family: str) -> list[torch.Tensor]:
    """Raw bits of every floating output of one forward pass, plus greedy tokens where the model generates."""
    args = {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in inputs(family).items()}
    with torch.no_grad():
        out = model(**args)
        result = [raw_bits(v) for v in out.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        if family in GENERATES:
            gen_args = {k: v for k, v in args.items() if k != "decoder_input_ids"}
            result.append(model.generate(**gen_args, max_new_tokens=4, do_sample=False, pad_token_id=0))
    assert result
    return result


def assert_same_outputs(a, b, family: str) -> None:
    for x, y in zip(outputs(a, family), outputs(b, family), strict=True):
        assert torch.equal(x, y)


def load(cls, folder: Path, mode: str, **kwargs):
    with llmcomp_hf.load_options(decode=mode):
        return cls.from_pretrained(folder, **kwargs)


def first_compressed(model) -> str:
    """Name of a weight stored compressed (a Linear's, in module order)."""
    for name, module in model.named_modules():
        if isinstance(module, COMPRESSED_TYPES):
            return f"{name}.weight"
    raise AssertionError("no compressed layer")


def plain_state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()}


def assert_all_kept(model, dense) -> None:
    """Every compressed weight of the checkpoint stays encoded in memory, once; each tied copy reads the
    encoded weight of its source (renames followed)."""
    encoded = [m for m in model.modules() if isinstance(m, EncodedWeight)]
    assert len(encoded) == len(model.hf_quantizer.inventory.weights)
    for copy, source in dense.all_tied_weights_keys.items():
        layer = model.get_submodule(copy.rpartition(".")[0])
        assert isinstance(layer, COMPRESSED_TYPES), copy
        assert layer.weight is model.get_submodule(source), copy


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch(request, tmp_path_factory):
    """(name, family, model class, dense reference model, its folder) for one architecture."""
    family, tie = ARCHS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    model = tiny_model(family, torch.bfloat16, tie)
    model.save_pretrained(root / "dense")
    cls = type(model)
    return request.param, family, cls, cls.from_pretrained(root / "dense"), root


@pytest.mark.parametrize("mode", MODES)
def test_cell(arch, mode, tmp_path, monkeypatch):
    name, family, cls, dense, root = arch
    # compress on load: same outputs at once
    model = load(cls, root / "dense", mode, quantization_config=CFG)
    assert_same_outputs(dense, model, family)
    if mode == "on_the_fly":
        assert any(isinstance(m, COMPRESSED_TYPES) for m in model.modules())
    model.save_pretrained(tmp_path / "c1")

    # reload: bit-identical outputs; decoded weights bit-identical
    reloaded = load(cls, tmp_path / "c1", mode)
    assert_same_outputs(dense, reloaded, family)
    if mode == "on_the_fly" and name in ALL_KEPT_ON_THE_FLY:
        assert_all_kept(reloaded, dense)
    if mode == "load":
        assert_same_state(plain_state(dense), plain_state(reloaded))

    # re-save the reloaded model, reload once more
    reloaded.save_pretrained(tmp_path / "c2")
    assert_same_state(plain_state(dense), plain_state(load(cls, tmp_path / "c2", "load")))

    # push_to_hub (HTTP faked): the uploaded files load back bit-identically
    hub = FakeHub(monkeypatch, remote_card=None, tmp=tmp_path)
    reloaded.push_to_hub("me/matrix")
    pushed = tmp_path / "pushed"
    pushed.mkdir()
    for name, data in hub.commits[-1].items():
        (pushed / name).write_bytes(data)
    assert_same_state(plain_state(dense), plain_state(load(cls, pushed, "load")))

    # dequantize: a plain model with every weight decoded in place; its save is a plain checkpoint
    plain = load(cls, tmp_path / "c1", mode).dequantize()
    assert not any(isinstance(m, COMPRESSED_TYPES) for m in plain.modules())
    assert getattr(plain.config, "quantization_config", None) is None
    assert_same_state(plain_state(dense), plain_state(plain))
    assert_same_outputs(dense, plain, family)
    plain.save_pretrained(tmp_path / "plain")
    assert "quantization_config" not in (tmp_path / "plain" / "config.json").read_text()
    assert_same_state(plain_state(dense), plain_state(cls.from_pretrained(tmp_path / "plain")))


@pytest.mark.parametrize("edit", ["data_add", "data_copy", "no_grad_add"])
@pytest.mark.parametrize("source", ["compress_on_load", "compressed"])
@pytest.mark.parametrize("mode", MODES)
def test_edit_then_save(arch, mode, source, edit, tmp_path):
    """Whatever route changes a weight (PEFT's merge_and_unload writes through ``.data``), the save holds
    what the parameter holds at save time."""
    _, family, cls, dense, root = arch
    if source == "compressed":
        load(cls, root / "dense", "load", quantization_config=CFG).save_pretrained(tmp_path / "c")
        model = load(cls, tmp_path / "c", mode)
    else:
        model = load(cls, root / "dense", mode, quantization_config=CFG)
    if mode == "on_the_fly":  # compressed layers are read-only; edit a plain parameter (a norm or bias)
        name = next(n for n, p in model.named_parameters() if p.dim() == 1)
    else:
        name = next(n for n in (f"{m}.weight" for m, _ in model.named_modules()) if n in dict(model.named_parameters())
                    and dict(model.named_parameters())[n].dim() == 2)
    param = dict(model.named_parameters())[name]
    if edit == "data_add":
        param.data += 1
    elif edit == "data_copy":
        param.data.copy_(torch.full_like(param, 0.5))
    else:
        with torch.no_grad():
            param += 1
    want = plain_state(model)[name].clone()
    model.save_pretrained(tmp_path / "edited")
    got = plain_state(load(cls, tmp_path / "edited", "load"))[name]
    assert torch.equal(raw_bits(got), raw_bits(want)), name


@pytest.mark.parametrize("mode", MODES)
def test_parts_straddling_shards(arch, mode, tmp_path):
    """Shards so small that most weights have their data, index and header in different files load the same."""
    name, family, cls, dense, root = arch
    load(cls, root / "dense", "load", quantization_config=CFG).save_pretrained(tmp_path / "c", max_shard_size="4KB")
    weight_map = json.loads((tmp_path / "c" / "model.safetensors.index.json").read_text())["weight_map"]
    files_of: dict[str, set[str]] = {}
    for key, file in weight_map.items():
        if ".llmcomp_" in key:
            files_of.setdefault(key.rpartition(".llmcomp_")[0], set()).add(file)
    assert any(len(files) > 1 for files in files_of.values())
    model = load(cls, tmp_path / "c", mode)
    assert_same_outputs(dense, model, family)
    if mode == "load":
        assert_same_state(plain_state(dense), plain_state(model))
    elif name in ALL_KEPT_ON_THE_FLY:
        assert_all_kept(model, dense)
