"""LoRA adapters (peft) on layers whose weight stays compressed in memory (``decode="on_the_fly"``).

peft builds LoRA layers only for the layer types it knows; :func:`lora_for_compressed` registers
``CompressedLinear`` and ``CompressedConv1D`` on a ``LoraConfig`` through peft's custom-module dispatch,
so ``get_peft_model`` / ``PeftModel.from_pretrained`` wrap them in :class:`CompressedLoraLinear`, as
peft wraps bitsandbytes' 4-bit layers. Every peft name this package uses is in this module; it is
imported only when LoRA is asked for, so peft stays optional.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from torch import nn

from llmcomp_hf.errors import LlmcompError
from llmcomp_hf.modules import CompressedConv1D, CompressedLinear

try:
    from peft import LoraConfig
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.tuners_utils import check_adapters_to_merge
except ImportError as exc:  # pragma: no cover - peft is a dev/extra dependency
    raise LlmcompError("LoRA on a compressed model needs peft: pip install 'peft>=0.22'") from exc
if "config" not in inspect.signature(LoraLinear.__init__).parameters:  # pragma: no cover - older peft
    raise LlmcompError("LoRA on a compressed model needs a peft whose LoRA layers take the LoraConfig (tested: 0.22): "
                       "pip install -U 'peft>=0.22'")

COMPRESSED_LAYERS = (CompressedLinear, CompressedConv1D)
# Inits that read or rewrite the base weight (PiSSA, OLoRA, LoftQ, ...) cannot run on an encoded one.
_INITS_WITHOUT_BASE_WEIGHT = (True, False, "gaussian")


def lora_for_compressed(config: LoraConfig) -> LoraConfig:
    """Register the compressed layer types as LoRA targets on ``config`` (a peft ``LoraConfig``); return it.

    ``get_peft_model(model, lora_for_compressed(LoraConfig(...)))``; to load a saved adapter, pass
    ``config=lora_for_compressed(LoraConfig.from_pretrained(adapter_dir))`` to ``PeftModel.from_pretrained``
    (the registration is not saved with the adapter).
    """
    if not isinstance(config, LoraConfig):
        raise LlmcompError(f"lora_for_compressed takes a peft LoraConfig, got {type(config).__name__}")
    config._register_custom_module({layer: CompressedLoraLinear for layer in COMPRESSED_LAYERS})
    return config


def _unsupported(what: str, target: str) -> LlmcompError:
    return LlmcompError(
        f"{what} needs the plain weight of {target or 'a compressed layer'}, which stays encoded on the fly; "
        "use plain LoRA (init_lora_weights=True or 'gaussian', no DoRA or other variant) or load the model "
        "without llmcomp_hf.load_options(decode='on_the_fly')"
    )


class CompressedLoraLinear(LoraLinear):
    """peft's LoRA ``Linear`` over a ``CompressedLinear`` / ``CompressedConv1D`` base.

    The base keeps its weight encoded and frozen (decoded per forward, again in backward; never kept);
    the adapters train. The forward is peft's own, so outputs equal LoRA over the plain layer. A merge
    needs a plain weight: ``merge`` swaps the base for its decoded plain module (checksum verified) and
    adds the delta as peft does, so ``merge_and_unload`` leaves ordinary layers holding the merged
    weights; ``unmerge`` puts the compressed base back, the original weight exactly.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, **kwargs: Any) -> None:
        conv1d = isinstance(base_layer, CompressedConv1D)
        if kwargs.get("parameter_name") is not None:
            raise _unsupported("LoRA on a parameter (target_parameters)", kwargs.get("target_name", ""))
        if config.fan_in_fan_out != conv1d:  # what peft does for Linear and Conv1D
            warnings.warn(f"fan_in_fan_out is set to {config.fan_in_fan_out} but the target module is "
                          f"{type(base_layer).__name__}; setting fan_in_fan_out to {conv1d}", stacklevel=2)
            config.fan_in_fan_out = conv1d
        super().__init__(base_layer, adapter_name, config=config, is_target_conv_1d_layer=conv1d, **kwargs)
        self._compressed_base: tuple[nn.Module, ...] = ()  # the base while a merge replaced it (not a submodule)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        if isinstance(module, CompressedConv1D):
            return module.nx, module.nf
        return module.in_features, module.out_features

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs: Any) -> None:
        if config.init_lora_weights not in _INITS_WITHOUT_BASE_WEIGHT:
            raise _unsupported(f"init_lora_weights={config.init_lora_weights!r}", kwargs.get("target_name", ""))
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs: Any) -> Any:
        variant = super().resolve_lora_variant(config=config, **kwargs)
        if variant is not None:
            raise _unsupported(f"the LoRA variant {type(variant).__name__}", "")
        return variant

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        base = self.base_layer
        if check_adapters_to_merge(self, adapter_names) and isinstance(base, COMPRESSED_LAYERS):
            self._compressed_base = (base,)
            self.base_layer = base.plain_module()
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def unmerge(self) -> None:
        if not self._compressed_base or not self.merged:
            return super().unmerge()
        (compressed,) = self._compressed_base
        compressed.to(self.base_layer.weight.device)
        self.base_layer, self._compressed_base = compressed, ()
        self.merged_adapters.clear()
        return None


__all__ = ["COMPRESSED_LAYERS", "CompressedLoraLinear", "lora_for_compressed"]
