"""One test per transformers internal that llmcomp-hf relies on (all behind ``llmcomp_hf._hf_compat``).

A transformers release that changes one of them fails the test named after it here, not users.
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch
import transformers as tf

from llmcomp_hf import _hf_compat as hf_compat
from llmcomp_hf.errors import LlmcompError
from tests.integration.helpers import tiny_model


def test_supported_version_is_checked():
    hf_compat.check_transformers_version()
    with pytest.raises(LlmcompError, match=re.escape(hf_compat.SUPPORTED_TRANSFORMERS)):
        hf_compat.check_transformers_version("5.20.0")


def test_conversion_ops_base_is_the_loaders_op_class():
    base = hf_compat.conversion_ops_base()
    assert inspect.isclass(base) and hasattr(base, "convert") and hasattr(base, "reverse_op")


def test_weight_converter_takes_patterns_ops_and_force_cpu():
    class Identity(hf_compat.conversion_ops_base()):
        def convert(self, input_dict, **kwargs):
            return input_dict

    converter = hf_compat.weight_converter_class()(["weight.x"], "weight", [Identity()], force_cpu=True)
    assert converter.force_cpu and converter.source_patterns and hasattr(converter, "collected_tensors")


def test_loader_key_order_sorts_layers_numerically():
    keys = ["m.layers.10.w", "m.layers.2.w", "m.layers.1.w"]
    assert sorted(keys, key=hf_compat.loader_key_order) == ["m.layers.1.w", "m.layers.2.w", "m.layers.10.w"]


def test_module_and_attr_finds_a_parameter():
    model = tiny_model("llama")
    module, attr = hf_compat.module_and_attr(model, "model.layers.0.mlp.up_proj.weight")
    assert module is model.model.layers[0].mlp.up_proj and attr == "weight"


def test_unexpected_key_patterns_are_added_and_restored():
    model = tiny_model("llama")
    before = model._keys_to_ignore_on_load_unexpected
    saved = hf_compat.ignore_unexpected(model, r"\.llmcomp_data$")
    assert r"\.llmcomp_data$" in model._keys_to_ignore_on_load_unexpected
    hf_compat.restore_unexpected(model, saved)
    assert model._keys_to_ignore_on_load_unexpected == before


def test_model_conversions_of_a_loaded_moe_model_split_experts_on_revert(tmp_path):
    tiny_model("mixtral", torch.bfloat16).save_pretrained(tmp_path)
    model = tf.MixtralForCausalLM.from_pretrained(tmp_path)
    conversions = hf_compat.model_conversions(model)
    assert conversions
    reverted = hf_compat.revert_conversions(model, model.state_dict(), conversions)
    assert "model.layers.0.block_sparse_moe.experts.0.w1.weight" in reverted
    assert not any(k.endswith("experts.gate_up_proj") for k in reverted)
    hf_compat.set_model_conversions(model, [])
    assert hf_compat.model_conversions(model) == []


def test_without_ops_restores_a_converter_our_op_joined(tmp_path):
    class Marker(hf_compat.conversion_ops_base()):
        def convert(self, input_dict, **kwargs):
            return input_dict

    tiny_model("mixtral", torch.bfloat16).save_pretrained(tmp_path)
    model = tf.MixtralForCausalLM.from_pretrained(tmp_path)
    merged = next(c for c in hf_compat.model_conversions(model) if getattr(c, "operations", None))
    joined = merged.copy([*merged._original_source_patterns, merged._original_source_patterns[0] + ".llmcomp_header"],
                         list(merged._original_target_patterns), operations=[Marker(), *merged.operations])
    joined._was_used = True
    restored = hf_compat.without_ops([joined], [], (Marker,), r"\.llmcomp_header$")[0]
    assert restored._original_source_patterns == merged._original_source_patterns
    assert not any(isinstance(op, Marker) for op in restored.operations) and restored.was_used()


def test_offloaded_parameter_reads_a_disk_offloaded_weight(tmp_path):
    tiny_model("llama", torch.bfloat16).save_pretrained(tmp_path / "dense")
    device_map = {"model.embed_tokens": "cpu", "model.layers": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu",
                  "lm_head": "cpu"}
    model = tf.LlamaForCausalLM.from_pretrained(tmp_path / "dense", device_map=device_map, offload_folder=tmp_path / "off")
    name = "model.layers.0.mlp.up_proj.weight"
    reference = tf.LlamaForCausalLM.from_pretrained(tmp_path / "dense").state_dict()[name]
    assert torch.equal(hf_compat.offloaded_parameter(model, name).view(torch.int16), reference.view(torch.int16))


def test_tied_weights_names_the_tied_copy():
    assert hf_compat.tied_weights(tiny_model("llama", tie=True)) == {"lm_head.weight": "model.embed_tokens.weight"}
    assert hf_compat.tied_weights(tiny_model("llama", tie=False)) == {}


def test_untie_takes_a_tie_out_of_what_tie_weights_applies_and_retie_puts_it_back():
    model = tiny_model("llama", tie=True)
    taken = hf_compat.untie(model, {"lm_head.weight", "model.embed_tokens.weight"})
    assert taken == {"lm_head.weight": "model.embed_tokens.weight"} and hf_compat.tied_weights(model) == {}
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.tie_weights(recompute_mapping=False)  # what loading and init_weights call: the tie is no longer applied
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    hf_compat.retie(model, taken)
    model.tie_weights(recompute_mapping=False)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def _mixtral_conversions(tmp_path):
    tiny_model("mixtral", torch.bfloat16).save_pretrained(tmp_path)
    model = tf.MixtralForCausalLM.from_pretrained(tmp_path)
    return model, hf_compat.model_conversions(model)


def test_merge_targets_names_the_converter_the_fused_parameter_and_the_path_below_it(tmp_path):
    model, conversions = _mixtral_conversions(tmp_path)
    key = "model.layers.1.block_sparse_moe.experts.3.w1.weight"
    targets = hf_compat.merge_targets([key, "model.layers.1.self_attn.q_proj.weight"], conversions, model)
    converter, pattern, target, path = targets[key]
    assert list(targets) == [key] and pattern in converter.source_patterns
    assert (target, path) == ("model.layers.1.mlp.experts.gate_up_proj", "3.w1.weight")


def test_a_pure_merge_runs_again_on_tensors_as_the_loader_ran_it(tmp_path):
    model, conversions = _mixtral_conversions(tmp_path)
    gate_up = next(c for c in conversions if "gate_up_proj" in c.target_patterns[0])
    assert hf_compat.runs_pure_merge(gate_up)
    w1 = [torch.full((2, 3), float(i)) for i in range(4)]
    w3 = [torch.full((2, 3), float(10 + i)) for i in range(4)]
    merged = hf_compat.run_merge(gate_up, dict(zip(gate_up.source_patterns, [w1, w3])), "model.layers.0.mlp.experts.gate_up_proj")
    assert torch.equal(merged, torch.cat([torch.stack(w1), torch.stack(w3)], dim=1))
    renaming = next(c for c in conversions if not getattr(c, "operations", None))
    assert not hf_compat.runs_pure_merge(renaming)


def test_a_module_marked_initialized_is_left_alone_by_weight_init():
    model = tiny_model("llama")
    for module in model.modules():  # as a model fresh from the loader, before its missing weights are initialised
        module.__dict__.pop("_is_hf_initialized", None)
    kept, other = model.model.layers[0].mlp.up_proj, model.model.layers[0].mlp.down_proj
    before = {id(m): m.weight.detach().clone() for m in (kept, other)}
    hf_compat.mark_initialized(kept)
    model.initialize_weights()
    assert torch.equal(kept.weight, before[id(kept)]) and not torch.equal(other.weight, before[id(other)])


def test_config_origin_is_where_a_config_was_loaded_from(tmp_path):
    tiny_model("llama").config.save_pretrained(tmp_path)
    name, _commit = hf_compat.config_origin(tf.AutoConfig.from_pretrained(tmp_path))
    assert name == str(tmp_path)


def test_save_pretrained_takes_the_arguments_the_card_hook_binds():
    params = inspect.signature(tf.PreTrainedModel.save_pretrained).parameters
    for name in ("save_directory", "is_main_process", "push_to_hub", "variant", "token"):
        assert name in params, name


def test_unknown_fusion_config_names_make_from_pretrained_raise(tmp_path):
    """The missing-plugin guard (_guard.py) relies on transformers validating fusion_config names."""
    tiny_model("llama").save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(config.replace("{", '{"fusion_config": {"no-such-fusion": false},', 1))
    with pytest.raises(ValueError, match="no-such-fusion"):
        tf.LlamaForCausalLM.from_pretrained(tmp_path)


def test_the_quantization_config_being_merged_is_read_from_transformers_merge(tmp_path):
    """from_pretrained(checkpoint with a quantization_config, quantization_config=other) passes ``other`` to
    ``merge_quantization_configs``; outside of it there is none (test_conflict.py checks the message)."""
    assert hf_compat.quantization_config_being_merged() is None
    from transformers.quantizers.auto import AutoHfQuantizer

    seen = []

    class Probe:
        @classmethod
        def from_dict(cls, d):
            seen.append(hf_compat.quantization_config_being_merged())
            return cls()

    assert "quantization_config_from_args" in inspect.signature(AutoHfQuantizer.merge_quantization_configs).parameters
    def merge_quantization_configs(quantization_config_from_args):  # the frame shape transformers has
        return Probe.from_dict({})

    merge_quantization_configs("theirs")
    assert seen == ["theirs"]
