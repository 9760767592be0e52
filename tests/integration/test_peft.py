"""LoRA (peft) on a base whose weights stay compressed in memory (``decode="on_the_fly"``).

Reference everywhere: the same adapter on the same checkpoint loaded with ``decode="load"``
(ordinary ``nn.Linear`` layers holding the decoded weights).
"""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch
from torch import nn

import llmcomp_hf
from llmcomp_hf import module_swap, modules
from llmcomp_hf._peft import CompressedLoraLinear
from llmcomp_hf.codec import encode
from llmcomp_hf.modules import CompressedConv1D, CompressedLinear

from .helpers import raw_bits, tiny_model

TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "c_fc"]}
IDS = torch.tensor([[1, 5, 9, 200, 17, 30], [3, 3, 8, 1, 0, 44]])


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict[str, Path]:
    """Compressed tiny bf16 checkpoints (every Linear/Conv1D/Embedding weight compressed), by architecture."""
    from transformers import AutoModelForCausalLM

    out = {}
    for kind in TARGETS:
        root = tmp_path_factory.mktemp(f"peft-{kind}")
        tiny_model(kind, torch.bfloat16, tie=False).save_pretrained(root / "dense")
        model = AutoModelForCausalLM.from_pretrained(root / "dense", quantization_config=llmcomp_hf.LosslessConfig(min_numel=0))
        model.save_pretrained(root / "packed")
        out[kind] = root / "packed"
    return out


def _load(folder: Path, decode: str):
    from transformers import AutoModelForCausalLM

    with llmcomp_hf.load_options(decode=decode):
        return AutoModelForCausalLM.from_pretrained(folder)


def _lora(kind: str, **kwargs) -> peft.LoraConfig:
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[kind], fan_in_fan_out=kind == "gpt2", **kwargs)


def _with_random_adapters(model, seed: int = 2):
    """Give every LoRA weight random values (B starts at zero, which would hide a wrong base)."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        if "lora_" in name:
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return model


def _encoded_bytes(model) -> dict[str, torch.Tensor]:
    """Every encoded buffer, under its name without peft's wrapper prefixes."""
    return {name.replace("base_model.model.", "").replace(".base_layer", ""): buf.clone()
            for name, buf in model.named_buffers() if ".llmcomp_" in name}


@pytest.mark.parametrize("kind", list(TARGETS))
def test_lora_on_compressed_base_equals_lora_on_plain_base(packed, kind: str) -> None:
    fly = peft.get_peft_model(_load(packed[kind], "on_the_fly"), llmcomp_hf.lora_for_compressed(_lora(kind)))
    plain = peft.get_peft_model(_load(packed[kind], "load"), _lora(kind))
    _with_random_adapters(fly), _with_random_adapters(plain)
    wrapped = [m for m in fly.modules() if isinstance(m, CompressedLoraLinear)]
    assert wrapped and all(isinstance(m.base_layer, (CompressedLinear, CompressedConv1D)) for m in wrapped)
    assert all("lora_" in name for name, p in fly.named_parameters() if p.ndim == 2)  # no dense base weight

    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        got = fly(IDS, labels=IDS)
    want = plain(IDS, labels=IDS)
    assert torch.equal(raw_bits(got.logits), raw_bits(want.logits))
    scratch = {buf.untyped_storage().data_ptr() for buf in modules.SCRATCH.buffers.values()}
    assert not [t for t in saved if t.untyped_storage().data_ptr() in scratch]  # autograd keeps no decoded weight

    got.loss.backward()
    want.loss.backward()
    grads = {n: p.grad for n, p in fly.named_parameters() if p.requires_grad}
    assert grads and sorted(grads) == sorted(n for n, p in plain.named_parameters() if p.requires_grad)
    for name, param in plain.named_parameters():
        if param.requires_grad:
            assert torch.equal(raw_bits(grads[name]), raw_bits(param.grad)), name


@pytest.mark.parametrize("layer", ["linear", "conv1d"])
def test_gradients_through_layers_sharing_the_decode_scratch(layer: str) -> None:
    """Input and bias gradients through two compressed layers in a row equal the plain layers'."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    if layer == "linear":
        plain = nn.Sequential(nn.Linear(16, 24), nn.Linear(24, 16)).to(torch.bfloat16)
    else:
        plain = nn.Sequential(Conv1D(24, 16), Conv1D(16, 24)).to(torch.bfloat16)
    fly = nn.Sequential(*[module_swap.compressed_module(m, encode(m.weight.detach(), name=f"{i}.weight"))
                          for i, m in enumerate(plain)])
    for model in (plain, fly):
        for m in model:
            m.bias.requires_grad_(True)
    x = torch.randn(3, 5, 16, dtype=torch.bfloat16)
    grads = []
    for model in (plain, fly):
        x_ = x.clone().requires_grad_(True)
        out = model(x_)
        out.backward(torch.ones_like(out))
        grads.append([x_.grad, *(m.bias.grad for m in model)])
        assert torch.equal(raw_bits(out), raw_bits(plain(x)))
    for a, b in zip(*grads):
        assert torch.equal(raw_bits(a), raw_bits(b))


def test_float32_input_meets_bf16_encoded_weight_exactly() -> None:
    """peft's prepare_model_for_kbit_training makes float32 activations: the layer computes as a float32 one."""
    torch.manual_seed(0)
    plain = nn.Linear(16, 8).to(torch.bfloat16)
    fly = module_swap.compressed_module(plain, encode(plain.weight.detach(), name="w"))
    fly.bias = nn.Parameter(plain.bias.detach().float())
    x = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(fly(x), nn.functional.linear(x, plain.weight.float(), plain.bias.float()))
    with pytest.raises(RuntimeError):  # narrowing is not done silently: the matmul refuses, as for nn.Linear
        fly(torch.randn(2, 16, dtype=torch.float16))


def test_trainer_fine_tunes_lora_on_the_compressed_base(packed, tmp_path) -> None:
    from transformers import Trainer, TrainingArguments

    base = _load(packed["llama"], "on_the_fly")
    assert base.hf_quantizer.is_trainable
    base = peft.prepare_model_for_kbit_training(base)
    encoded_before = _encoded_bytes(base)
    torch.manual_seed(0)
    model = peft.get_peft_model(base, llmcomp_hf.lora_for_compressed(_lora("llama")))

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model(IDS, labels=IDS).loss)

    before = loss()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=6, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=[{"input_ids": r, "labels": r} for r in IDS] * 4).train()
    assert loss() < before
    after = _encoded_bytes(model)
    assert sorted(after) == sorted(encoded_before)
    assert all(torch.equal(after[name], encoded_before[name]) for name in after)


def test_saved_adapter_reloads_onto_a_fresh_compressed_base(packed, tmp_path) -> None:
    trained = _with_random_adapters(peft.get_peft_model(_load(packed["llama"], "on_the_fly"),
                                                        llmcomp_hf.lora_for_compressed(_lora("llama"))))
    trained.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        want = trained(IDS).logits
    config = llmcomp_hf.lora_for_compressed(peft.LoraConfig.from_pretrained(tmp_path / "adapter"))
    again = peft.PeftModel.from_pretrained(_load(packed["llama"], "on_the_fly"), tmp_path / "adapter", config=config)
    plain = peft.PeftModel.from_pretrained(_load(packed["llama"], "load"), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(raw_bits(again(IDS).logits), raw_bits(want))
        assert torch.equal(raw_bits(plain(IDS).logits), raw_bits(want))


@pytest.mark.parametrize("kind", list(TARGETS))
def test_merge_and_unload_saves_the_merged_weights(packed, kind: str, tmp_path) -> None:
    fly = _with_random_adapters(peft.get_peft_model(_load(packed[kind], "on_the_fly"),
                                                    llmcomp_hf.lora_for_compressed(_lora(kind))))
    plain = _with_random_adapters(peft.get_peft_model(_load(packed[kind], "load"), _lora(kind)))
    merged, plain_merged = fly.merge_and_unload(), plain.merge_and_unload()
    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in merged.modules())
    merged_names = [n for n, m in merged.named_modules() if n.rpartition(".")[2] in TARGETS[kind]]
    assert merged_names and not any(isinstance(merged.get_submodule(n), (CompressedLinear, CompressedConv1D))
                                    for n in merged_names)
    assert any(isinstance(m, CompressedLinear) for m in merged.modules())  # the layers without adapter stay compressed
    merged_weights = {f"{n}.weight": merged.get_submodule(n).weight for n in merged_names}
    plain_state = plain_merged.state_dict()
    for name, weight in merged_weights.items():
        assert torch.equal(raw_bits(weight), raw_bits(plain_state[name])), name

    merged.save_pretrained(tmp_path / "merged")
    reloaded = _load(tmp_path / "merged", "load").state_dict()
    for name, weight in merged_weights.items():
        assert torch.equal(raw_bits(reloaded[name]), raw_bits(weight)), name
    with torch.no_grad():
        want = plain_merged(IDS).logits
        assert torch.equal(raw_bits(merged(IDS).logits), raw_bits(want))
        assert torch.equal(raw_bits(_load(tmp_path / "merged", "on_the_fly")(IDS).logits), raw_bits(want))


def test_unmerge_puts_the_compressed_base_back(packed) -> None:
    model = _with_random_adapters(peft.get_peft_model(_load(packed["llama"], "on_the_fly"),
                                                      llmcomp_hf.lora_for_compressed(_lora("llama"))))
    encoded = _encoded_bytes(model)
    with torch.no_grad():
        want = model(IDS).logits
        model.merge_adapter()
        layer = model.base_model.model.model.layers[0].self_attn.q_proj
        assert type(layer.base_layer) is nn.Linear
        model.unmerge_adapter()
        assert isinstance(layer.base_layer, CompressedLinear) and not layer.merged
        assert torch.equal(raw_bits(model(IDS).logits), raw_bits(want))
    after = _encoded_bytes(model)
    assert all(torch.equal(after[name], encoded[name]) for name in encoded)


@pytest.mark.parametrize("options", [{"use_dora": True}, {"init_lora_weights": "pissa"}])
def test_lora_that_needs_the_plain_base_weight_is_refused(packed, options: dict) -> None:
    base = _load(packed["llama"], "on_the_fly")
    with pytest.raises(llmcomp_hf.LlmcompError, match="decode='on_the_fly'"):
        peft.get_peft_model(base, llmcomp_hf.lora_for_compressed(_lora("llama", **options)))


def test_lora_for_compressed_takes_a_lora_config() -> None:
    with pytest.raises(llmcomp_hf.LlmcompError, match="LoraConfig"):
        llmcomp_hf.lora_for_compressed(peft.IA3Config(target_modules=["q_proj"]))
