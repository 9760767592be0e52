"""The transformers ``HfQuantizer`` for llmcomp: compress on load, save shards, decode on load.

Flow inside ``from_pretrained`` (transformers 5.x):

* dense checkpoint + ``quantization_config=LosslessConfig()`` (``pre_quantized=False``): every selected
  weight goes through ``EncodeOp`` as it loads; the model keeps the plain weight for compute and the
  quantizer keeps the EncodedTensor, which ``save_pretrained`` writes unless the weight changed since.
* llmcomp checkpoint (``pre_quantized=True``): one ``WeightConverter`` gathers the three parts of each
  compressed weight and ``DecodeOp`` decodes them on the CPU into an ordinary, bit-identical weight.

``save_pretrained`` calls ``get_state_dict_and_metadata``, which returns the shard tensors of
docs/format.md part 2 and the shard metadata, and adds the missing-plugin guard to the config.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers.quantizers.base import HfQuantizer
from transformers.quantizers.quantizers_utils import get_module_from_name

from llmcomp_hf import loading
from llmcomp_hf._guard import add_guard, strip_guard
from llmcomp_hf._register import check_transformers_version
from llmcomp_hf.codec import EncodedTensor, encode
from llmcomp_hf.config import LosslessConfig
from llmcomp_hf.errors import FormatError, LlmcompError, where
from llmcomp_hf.format.reader import shard_keys
from llmcomp_hf.format.shard import SHARD_METADATA, pack, part_key, split_key
from llmcomp_hf.modules import EncodedWeight, compressed_module, keep_compressed

logger = logging.getLogger(__name__)

_Stamp = tuple[int, int, torch.dtype, torch.Size]


class LlmcompHfQuantizer(HfQuantizer):
    """Lossless llmcomp compression behind ``quantization_config`` (weights are decoded for compute)."""

    requires_calibration = False
    # Every checkpoint `.weight` goes through one converter: the three parts of a compressed weight, or
    # the plain tensor (norms, small weights), which the op casts to the parameter's dtype.
    serialized_names = {"weight": ["weight"] + [part_key("weight", p) for p in ("data", "index", "header")]}

    def __init__(self, quantization_config: LosslessConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self.encoded: dict[str, EncodedTensor] = {}
        self.load_error: LlmcompError | None = None  # first decode failure, raised after loading
        self._stamps: dict[str, _Stamp] = {}
        self._files: dict[str, str] = {}
        self._targets: set[str] = set()
        self._converters: list[Any] = []
        self.options = loading.current()  # read inside the user's `with load_options(...)` block

    @property
    def on_the_fly(self) -> bool:
        return self.options.decode == "on_the_fly"

    # -- environment and config ---------------------------------------------------------------
    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        check_transformers_version()

    def update_attn_implementation(self, config: Any) -> Any:
        # The only hook that sees the model config before `from_pretrained` validates `fusion_config`.
        strip_guard(config)
        return super().update_attn_implementation(config)

    def remove_quantization_config(self, model: Any) -> None:
        strip_guard(model.config)
        super().remove_quantization_config(model)

    # -- loading ------------------------------------------------------------------------------
    def _process_model_before_weight_loading(self, model: Any, checkpoint_files: list[str] | None = None, **kwargs: Any) -> Any:
        self.load_error = None
        if self.pre_quantized:
            self._files = {}
            for file in checkpoint_files or []:
                if not file.endswith(".safetensors"):
                    raise FormatError(f"llmcomp checkpoints are safetensors shards{where(None, file)}; this file is not")
                keys, _ = shard_keys(file)  # also checks the shard format version
                for key in keys:
                    base, part = split_key(key)
                    if part is not None:
                        self._files.setdefault(base, file)
            if self.on_the_fly:
                _install_placeholders(model, self._files)
        else:  # a tied copy (lm_head of tied embeddings) is not encoded: only its source is stored
            tied = getattr(model, "all_tied_weights_keys", None) or {}
            self._targets = set(select_weights(model, self.quantization_config)) - set(tied)
        return model

    def param_needs_quantization(self, model: Any, param_name: str, **kwargs: Any) -> bool:
        return not self.pre_quantized and param_name in self._targets

    def get_quantize_ops(self) -> Any:
        from llmcomp_hf._ops import EncodeOp

        return EncodeOp(self)

    def get_load_operations(self) -> dict[str, Any]:
        if self.pre_quantized and self.on_the_fly:
            return {}  # encoded parts load straight into the compressed modules' buffers
        from llmcomp_hf._ops import DecodeOp

        return {"deserialize": DecodeOp, "dequantize": DecodeOp}

    def get_weight_conversions(self) -> list[Any]:
        if not self.pre_quantized or self.on_the_fly:
            return []
        from transformers.core_model_loading import WeightConverter

        from llmcomp_hf._ops import DecodeOp

        # Longest pattern first: transformers < 5.24 tries the patterns in order with no name boundary,
        # so `weight` would also match inside `weight.llmcomp_data`. force_cpu: the compressed bytes
        # stay on the CPU where the decoder runs; the loader moves the decoded weight.
        self._converters = [
            WeightConverter(sorted(names, key=len, reverse=True), param, [DecodeOp(self)], force_cpu=True)
            for param, names in self.serialized_names.items()
        ]
        return list(self._converters)

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        if self.load_error is not None:
            error, self.load_error = self.load_error, None
            raise error
        # Saving must not "reverse" our converters: get_state_dict_and_metadata already writes final names.
        if getattr(model, "_weight_conversions", None):
            model._weight_conversions = [c for c in model._weight_conversions if all(c is not o for o in self._converters)]
        if self.on_the_fly:
            if self.pre_quantized:
                _check_encoded_modules(model, self.options.verify, self.file_of)
            else:
                keep_compressed(model, self.encoded)
                self.encoded.clear()
            return model
        self._stamps = {}
        for name in list(self.encoded):
            param = _tensor(model, name)
            if param is None or param.device.type == "meta":
                del self.encoded[name]  # offloaded: re-encoded from disk on save
            else:
                self._stamps[name] = _stamp(param)
        return model

    def file_of(self, name: str) -> str | None:
        """The shard holding compressed tensor ``name`` (for error messages)."""
        if name in self._files:
            return self._files[name]
        return next((f for key, f in self._files.items() if key.endswith("." + name) or name.endswith("." + key)), None)

    # -- encoding and saving ------------------------------------------------------------------
    def encode_weight(self, name: str, tensor: torch.Tensor, keep: bool = True) -> EncodedTensor:
        """Encode ``tensor`` with this config's coder and block size; ``keep`` it for the next save."""
        cfg = self.quantization_config
        enc = encode(tensor.detach(), coder=cfg.coder, block_size=cfg.block_size, name=name)
        if keep:
            self.encoded[name] = enc
        return enc

    def get_state_dict_and_metadata(self, model: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The shard tensors: compressed parts for selected weights, everything else as is.

        Encodings kept from compress-on-load are written when their weight is unchanged; the others
        are encoded now and not kept (memory stays bounded by what the user asked to compress).
        """
        from transformers.integrations.accelerate import load_offloaded_parameter

        add_guard(model.config)
        state = model.state_dict()
        tied = _shared_tied_targets(model)
        targets = set(select_weights(model, self.quantization_config)) - set(tied)
        out: dict[str, torch.Tensor] = {}
        reused = 0
        for name, tensor in state.items():
            if name in tied and tied[name] in targets:
                continue  # re-tied on load; its source is stored compressed
            if name not in targets:
                out[name] = tensor
                continue
            enc = self.encoded.pop(name, None)
            param = _tensor(model, name)
            if enc is not None and param is not None and self._stamps.get(name) == _stamp(param):
                self.encoded[name] = enc
                reused += 1
            else:
                self._stamps.pop(name, None)
                if tensor.device.type == "meta":
                    tensor = load_offloaded_parameter(model, name)
                enc = self.encode_weight(name, tensor, keep=False)
            out.update(pack(name, enc))
        logger.info("llmcomp: saving %d compressed weights (%d reused, %d encoded)", len(targets), reused, len(targets) - reused)
        return out, dict(SHARD_METADATA)

    def compression_stats(self) -> dict[str, float]:
        """Sizes of the encodings this quantizer holds: tensors, original and stored bytes, ratio."""
        original = sum(e.original_nbytes for e in self.encoded.values())
        stored = sum(e.nbytes for e in self.encoded.values())
        return {
            "tensors": len(self.encoded),
            "original_bytes": original,
            "stored_bytes": stored,
            "ratio": stored / original if original else 1.0,
        }

    # -- capabilities -------------------------------------------------------------------------
    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        # Decoded weights are ordinary tensors (changed ones are re-encoded on save); encoded ones are not.
        return not self.on_the_fly

    @property
    def is_compileable(self) -> bool:
        return True

    def _dequantize(self, model: Any, dtype: torch.dtype | None = None) -> Any:
        # Weights are already ordinary tensors in their loaded dtypes: only the encodings go.
        self.encoded.clear()
        self._stamps.clear()
        return model


def select_weights(model: torch.nn.Module, config: LosslessConfig) -> list[str]:
    """Names of the ``weight`` parameters the config compresses, in module order."""
    kinds, dtypes = set(config.module_types), set(config.dtypes)
    names = []
    for module_name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is None or not any(c.__name__ in kinds for c in type(module).__mro__):
            continue
        if str(weight.dtype).removeprefix("torch.") not in dtypes or weight.numel() < config.min_numel:
            continue
        if _skipped(module_name, config.modules_to_not_convert):
            continue
        names.append(f"{module_name}.weight" if module_name else "weight")
    return names


def _skipped(module_name: str, patterns: list[str]) -> bool:
    """True when an entry equals the module path, a prefix of it, or a run of its segments."""
    padded = f".{module_name}."
    return any(f".{p}." in padded for p in patterns)


def _tensor(model: torch.nn.Module, name: str) -> torch.Tensor | None:
    try:
        module, attr = get_module_from_name(model, name)
    except AttributeError:
        return None
    value = getattr(module, attr, None)
    return value if isinstance(value, torch.Tensor) else None


def _stamp(param: torch.Tensor) -> _Stamp:
    """Changes whenever the weight may have changed: new storage, in-place update, cast or reshape."""
    return (param.data_ptr(), param._version, param.dtype, param.shape)


def _shared_tied_targets(model: torch.nn.Module) -> dict[str, str]:
    """``{target: source}`` for tied weights that really share their tensor (so one copy is saved)."""
    out = {}
    for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        a, b = _tensor(model, target), _tensor(model, source)
        if a is None or b is None:
            continue
        if a is b or (a.device.type != "meta" and a.device == b.device and a.data_ptr() == b.data_ptr()):
            out[target] = source
    return out


def _install_placeholders(model: torch.nn.Module, files: dict[str, str]) -> None:
    """Swap each module whose weight is stored compressed for a compressed twin with empty buffers.

    Buffer sizes come from the shard headers, so the loader fills them like any other tensor.
    Modules without a compressed twin (e.g. a Linear subclass) are left to fail loudly as missing.
    """
    from safetensors import safe_open

    handles: dict[str, Any] = {}
    try:
        for name, file in files.items():
            module_name, _, attr = name.rpartition(".")
            if attr != "weight":
                continue
            try:
                module = model.get_submodule(module_name)
            except AttributeError:
                continue
            if file not in handles:
                handles[file] = safe_open(file, framework="pt")
            sizes = tuple(int(handles[file].get_slice(part_key(name, p)).get_shape()[0]) for p in ("data", "index", "header"))
            twin = compressed_module(module, EncodedWeight.placeholder(name, sizes))
            if twin is None:
                raise FormatError(
                    f"cannot keep {type(module).__name__} weights compressed in memory{where(name, file)}; "
                    "load without llmcomp_hf.load_options(decode='on_the_fly')"
                )
            parent_name, _, child = module_name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, twin)
    finally:
        handles.clear()


def _check_encoded_modules(model: torch.nn.Module, verify: bool, file_of: Any) -> None:
    """Validate every encoded weight once (and check its checksum with a decode into scratch)."""
    for module_name, module in model.named_modules():
        if not isinstance(module, EncodedWeight):
            continue
        try:
            module.encoded  # parses and validates the header and index
            if verify:  # a transient full decode, not the shared scratch (it would stay embedding-sized)
                module.decode(verify=True)
        except FormatError as exc:
            raise type(exc)(f"{exc}{where(None, file_of(module_name))}") from exc
