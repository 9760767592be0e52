"""The transformers ``HfQuantizer`` for llmcomp: compress on load, save shards, decode on load.

Flow inside ``from_pretrained`` (transformers 5.x):

* dense checkpoint + ``quantization_config=LosslessConfig()`` (``pre_quantized=False``): every selected
  weight goes through ``EncodeOp`` as it loads; the model keeps the plain weight for compute and the
  quantizer keeps the EncodedTensor, which ``save_pretrained`` writes unless the weight changed since.
  With a lossy ``CompressionConfig`` the op applies the stages instead: the model gets the
  reconstruction (what a reload gives) and the quantizer keeps the encoded transform tensors.
* llmcomp checkpoint (``pre_quantized=True``): one ``WeightConverter`` gathers the stored parts of each
  compressed weight and ``DecodeOp`` decodes them on the CPU into an ordinary weight (bit-identical for
  lossless weights; the reconstruction for lossy ones, whose stored form is kept for re-saving).

``save_pretrained`` calls ``get_state_dict_and_metadata``, which returns the shard tensors of
docs/format.md part 2 and the shard metadata, and adds the missing-plugin guard to the config.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import torch
from transformers.quantizers.base import HfQuantizer

from llmcomp_hf import _hf_compat as hf_compat
from llmcomp_hf import _save_hooks, loading
from llmcomp_hf._guard import add_guard, strip_guard
from llmcomp_hf._ledger import Ledger, read_tensor
from llmcomp_hf._placeholders import check_encoded_modules, place_compressed, tie_kept
from llmcomp_hf._save_state import checkpoint_state
from llmcomp_hf._select import Fingerprint, fingerprint, select_weights, tensor_of
from llmcomp_hf.codec import EncodedTensor, encode
from llmcomp_hf.config import CompressionConfig
from llmcomp_hf.errors import FormatError, LlmcompError, where
from llmcomp_hf.format.inventory import Inventory, check_plain_listed, inventory
from llmcomp_hf.format.lossy import LossyWeight, compress_lossy
from llmcomp_hf.format.reader import shard_keys
from llmcomp_hf.format.shard import PARTS, check_plain_file, part_key, split_key, transform_base
from llmcomp_hf.module_swap import decompress_modules, keep_compressed
from llmcomp_hf.modules import EncodedWeight

logger = logging.getLogger(__name__)
_DATA_AND_INDEX = r"\.llmcomp_(data|index)$"  # the keys a headers-only load leaves to the prefetcher
_PART_SUFFIX = r"\.llmcomp_(data|index|header|transform)$"
_NOT_SET = object()


class LlmcompHfQuantizer(HfQuantizer):
    """llmcomp compression (lossless, or lossy stages + entropy coding) behind ``quantization_config``.

    Weights are decoded for compute; ``compression_stats()`` reports sizes and bits/weight.
    """

    requires_calibration = False
    # Every checkpoint `.weight` goes through one converter: the three parts of a compressed weight, or
    # the plain tensor (norms, small weights), which the op casts to the parameter's dtype.
    serialized_names = {"weight": ["weight"] + [part_key("weight", p) for p in ("data", "index", "header")]}

    def __init__(self, quantization_config: CompressionConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self.encoded: dict[str, EncodedTensor] = {}
        self.lossy: dict[str, LossyWeight] = {}  # lossy weights as stored (compressed on load or read)
        self.stages: Any = None  # the config's lossy pipeline (compress on load)
        self.plan: Any = None  # calibration.CalibratedPlan of a calibrated config
        self.load_error: LlmcompError | None = None  # first decode failure, raised after loading
        self.fingerprints: dict[str, Fingerprint] = {}  # content of each weight whose encoding is kept
        self._targets: set[str] = set()
        self._converters: list[Any] = []
        self._decode_names: list[str] = []  # on the fly: weights decoded at load (names as the converters see them)
        self._plain_keys: list[str] = []  # on the fly: the checkpoint's tensors that are not encoded parts
        self._untied: dict[str, str] = {}  # on the fly: ties now held by one shared encoded weight (see _placeholders)
        self.conversions: list[Any] | None = None  # the model's own conversions (renames, MoE merges), reverted on save
        self.prefetch: Any = None  # _prefetch.Prefetcher while a compressed checkpoint loads
        self.inventory = Inventory()  # the compressed weights of the checkpoint loading
        self.ledger = Ledger(self.inventory)  # the compressed weights decoded so far
        self._unexpected_before: Any = _NOT_SET  # the model's own unexpected-key patterns (headers-only loads)
        self.options = loading.current()  # read inside the user's `with load_options(...)` block

    @property
    def on_the_fly(self) -> bool:
        return self.options.decode == "on_the_fly"

    # -- environment and config ---------------------------------------------------------------
    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        hf_compat.check_transformers_version()

    def update_attn_implementation(self, config: Any) -> Any:
        # The only hook that sees the model config before `from_pretrained` validates `fusion_config`.
        strip_guard(config)
        self._early_prefetch(config)
        return super().update_attn_implementation(config)

    def remove_quantization_config(self, model: Any) -> None:
        strip_guard(model.config)
        super().remove_quantization_config(model)

    # -- loading ------------------------------------------------------------------------------
    def _process_model_before_weight_loading(self, model: Any, checkpoint_files: list[str] | None = None, **kwargs: Any) -> Any:
        self.load_error = None
        if self.pre_quantized:
            headers: list[tuple[str, list[str], dict[str, str]]] = []
            for file in checkpoint_files or []:
                if not file.endswith(".safetensors"):
                    raise FormatError(f"llmcomp checkpoints are safetensors shards{where(None, file)}; this file is not")
                headers.append((file, *shard_keys(file)))  # also checks the shard format version
            keys_by_file = [(file, keys) for file, keys, _ in headers]
            all_keys = [key for _, keys in keys_by_file for key in keys]
            self.inventory = inventory(keys_by_file)  # every encoded tensor has all its parts
            check_plain_listed(headers)  # every plain tensor with a checksum is there
            self.ledger = Ledger(self.inventory)
            lossy_names = set(self.inventory.lossy)
            if lossy_names and self.on_the_fly:
                name = min(lossy_names)
                raise FormatError(
                    f"this checkpoint holds lossy weights, which cannot be kept compressed in memory"
                    f"{where(name, self.inventory.bases.get(name))}; load it without "
                    "llmcomp_hf.load_options(decode='on_the_fly')"
                )
            self.serialized_names = _serialized_names(lossy_names, all_keys)
            self._plain_keys = [key for key in all_keys if split_key(key)[1] is None]
            if not self.on_the_fly:  # on the fly, update_weight_conversions swaps the modules
                self._start_prefetch(lossy_names, kwargs.get("device_map"), [file for file, _ in keys_by_file])
                if self.prefetch is not None:
                    self._headers_only(model)
            if self.options.verify:  # plain tensors (norms, biases) against their checksums in the shard metadata
                covered = {os.path.realpath(f) for f in (self.prefetch.plain_files if self.prefetch else ())}
                for file, _ in keys_by_file:
                    if os.path.realpath(file) not in covered:  # else checked on the prefetcher's thread
                        check_plain_file(file)
        else:
            if self.on_the_fly and not self.quantization_config.is_lossless:
                raise LlmcompError(
                    "lossy stages cannot be kept compressed in memory: compress without "
                    "llmcomp_hf.load_options(decode='on_the_fly'), save, then load the saved model"
                )
            self.stages = self.quantization_config.pipeline()
            # a tied copy (lm_head of tied embeddings) is not encoded: only its source is stored
            tied = hf_compat.tied_weights(model)
            self._targets = set(select_weights(model, self.quantization_config)) - set(tied)
            self.plan = self.quantization_config.calibrated_plan(self._targets)
        return model

    def _prefetch_wanted(self) -> bool:
        return self.pre_quantized and not self.on_the_fly and os.environ.get("LLMCOMP_PREFETCH", "1") != "0"

    def _early_prefetch(self, config: Any) -> None:
        """Check the shard list and start decoding before the model is even built, when the checkpoint
        is a local folder or a Hub repo in the local cache (looked up without network, at the config's commit).

        The model's construction is Python on one core, so the other decodes for free. The shard list
        is guessed (``subfolder=``/``variant=``/``cache_dir=`` loads may read other files); the
        prefetcher only hands out a weight whose stored header, checksum included, matches the one
        the loader reads, and ``_start_prefetch`` replaces it when the files differ.
        """
        self.prefetch = None
        if not self.pre_quantized:
            return
        from llmcomp_hf.format.reader import checkpoint_files
        from llmcomp_hf.hub import local_checkpoint

        folder = local_checkpoint(*hf_compat.config_origin(config))
        if folder is None:
            return
        try:  # a damaged index.json is refused here, naming it, before transformers parses it
            files = checkpoint_files(folder)
        except FileNotFoundError:  # e.g. a subfolder= load: the loader finds the files
            return
        if self._prefetch_wanted():
            from llmcomp_hf._prefetch import prefetch_checkpoint

            self.prefetch = prefetch_checkpoint(files, self.options.verify)

    def _start_prefetch(self, lossy_names: set[str], device_map: Any, files: list[str] | tuple = ()) -> None:
        """Decode the lossless weights in the background while transformers loads (see _prefetch)."""
        from llmcomp_hf._prefetch import Prefetcher

        early, self.prefetch = getattr(self, "prefetch", None), None
        offloaded = isinstance(device_map, dict) and "disk" in device_map.values()
        if lossy_names or offloaded or not self.inventory.bases or not self._prefetch_wanted():
            if early is not None:
                early.close()
            return
        if early is not None and early.serves(self.inventory.bases, self.inventory.part_files):
            self.prefetch = early
            return
        if early is not None:
            early.close()
        try:
            self.prefetch = Prefetcher(self.inventory.bases.items(), self.options.verify,
                                       part_files=self.inventory.part_files, plain_files=files).start()
        except Exception as exc:  # e.g. a missing header part: the loader reports it with its name
            logger.debug("llmcomp: no prefetch (%s)", exc)

    def _headers_only(self, model: Any) -> None:
        """With a prefetcher running, the loader passes only each weight's header to ``DecodeOp``.

        The prefetcher decodes from its own mapping of the files, so transformers need not copy the
        compressed bytes out of the shards (a copy of every data part per load); the data and index
        keys are then checkpoint keys without a parameter, which the model is told to expect. A
        weight the prefetcher does not hand out is decoded from parts read by ``read_parts``.
        """
        self.serialized_names = {"weight": ["weight", part_key("weight", "header")]}
        self._unexpected_before = hf_compat.ignore_unexpected(model, _DATA_AND_INDEX)

    def read_parts(self, header: torch.Tensor, parts: dict[str, Any]) -> dict[str, Any]:
        """``parts`` completed with the stored parts of the weight whose header this is (headers-only loads)."""
        name = self.prefetch.source(header) if self.prefetch is not None else None
        if name is None:
            return parts
        out = dict(parts)
        for part in PARTS:
            key = part_key(name, part)
            if out.get(part) is None and key in self.inventory.part_files:
                out[part] = read_tensor(self.inventory.part_files[key], key)
        return out

    def _stop_prefetch(self, model: Any = None) -> Exception | None:
        """Close the prefetcher; returns what its check of the plain tensors found (None: all match)."""
        error = None
        if getattr(self, "prefetch", None) is not None:
            self.prefetch.close()
            error = self.prefetch.plain_error()
            self.prefetch = None
        if model is not None and self._unexpected_before is not _NOT_SET:
            hf_compat.restore_unexpected(model, self._unexpected_before)
            self._unexpected_before = _NOT_SET
        return error

    def param_needs_quantization(self, model: Any, param_name: str, **kwargs: Any) -> bool:
        return not self.pre_quantized and param_name in self._targets

    def get_quantize_ops(self) -> Any:
        from llmcomp_hf._ops import EncodeOp

        return EncodeOp(self)

    def get_load_operations(self) -> dict[str, Any]:
        from llmcomp_hf._ops import DecodeOp

        return {"deserialize": DecodeOp, "dequantize": DecodeOp}

    def update_weight_conversions(self, weight_conversions: list[Any], model: Any) -> list[Any]:
        if self.pre_quantized and self.on_the_fly:
            placement = place_compressed(model, weight_conversions, self.inventory, self._plain_keys)
            self._decode_names, self._untied = placement.decode, placement.untied
            unused = {id(c) for c in placement.unused_converters}
            weight_conversions = [c for c in weight_conversions if id(c) not in unused]
        return super().update_weight_conversions(weight_conversions, model)

    def get_weight_conversions(self) -> list[Any]:
        if not self.pre_quantized:
            return []
        from llmcomp_hf._ops import DecodeOp, fast_copy_converter

        # force_cpu: the compressed bytes stay on the CPU where the decoder runs; the loader moves the result.
        converter = fast_copy_converter(hf_compat.weight_converter_class())
        if self.on_the_fly:  # only the weights decoded at load; the others load into their twins' buffers
            if not self._decode_names:
                return []
            names = "|".join(re.escape(name) for name in self._decode_names)
            sources = [f"^({names})\\.{part_key('', part)[1:]}" for part in PARTS]
            self._converters = [converter(sources, r"\1", [DecodeOp(self)], force_cpu=True)]
            return list(self._converters)
        # Longest pattern first: transformers < 5.24 tries the patterns in order with no name boundary,
        # so `weight` would also match inside `weight.llmcomp_data`.
        self._converters = [
            converter(sorted(names, key=len, reverse=True), param, [DecodeOp(self)], force_cpu=True)
            for param, names in self.serialized_names.items()
        ]
        return list(self._converters)

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        plain_error = self._stop_prefetch(model)
        if self.load_error is not None:
            error, self.load_error = self.load_error, None
            raise error
        if plain_error is not None:
            raise plain_error
        if self.pre_quantized:
            if self.on_the_fly:
                for module in model.modules():
                    if isinstance(module, EncodedWeight) and module.llmcomp_header.device.type != "meta":
                        self.ledger.note(module.llmcomp_header)
            self.ledger.check(model)
        _tag(model, self.quantization_config)
        _save_hooks.install(model)  # save_pretrained writes our card; push_to_hub uploads it
        # The quantizer reverts the model's own conversions itself when saving (get_state_dict_and_metadata
        # compresses the tensors under their checkpoint names), so transformers' revert is left nothing to do.
        from llmcomp_hf._ops import DecodeOp, EncodeOp

        self.conversions = hf_compat.without_ops(hf_compat.model_conversions(model), self._converters,
                                                 (DecodeOp, EncodeOp), _PART_SUFFIX)
        hf_compat.set_model_conversions(model, [])
        if self.on_the_fly:
            if self.pre_quantized:
                check_encoded_modules(model, self.options.verify, self.file_of)
            else:
                self._untied = tie_kept(model, keep_compressed(model, self.encoded))
                self.encoded.clear()
            return model
        self.fingerprints = {}
        for name in list(self.encoded):
            param = tensor_of(model, name)
            if param is None or param.device.type == "meta":
                del self.encoded[name]  # offloaded: re-encoded from disk on save
            else:
                self.fingerprints[name] = fingerprint(param)
        for name in list(self.lossy):  # kept even when offloaded: re-applying the stages would compound the loss
            param = tensor_of(model, name)
            if param is None:
                del self.lossy[name]
            elif param.device.type != "meta":
                self.fingerprints[name] = fingerprint(param)
        return model

    def file_of(self, name: str) -> str | None:
        """The shard holding compressed tensor ``name`` (for error messages)."""
        files = self.inventory.bases
        if name in files:
            return files[name]
        return next((f for key, f in files.items() if key.endswith("." + name) or name.endswith("." + key)), None)

    # -- encoding and saving ------------------------------------------------------------------
    def compress_weight(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Compress one weight on load and keep the result; return what the model holds from now on.

        Lossless: ``tensor`` itself. Lossy: the reconstruction (bit-identical to a reload). A weight the
        stages cannot take is reported after loading (``load_error``) and kept unchanged meanwhile.
        """
        if self.quantization_config.is_lossless:
            self.encode_weight(name, tensor)
            return tensor
        if self.load_error is not None:
            return tensor
        try:
            stored, weight = self.compress_lossy_weight(name, tensor)
        except LlmcompError as exc:
            self.load_error = exc
            return tensor
        self.lossy[name] = stored
        return weight

    def compress_lossy_weight(self, name: str, tensor: torch.Tensor) -> tuple[LossyWeight, torch.Tensor]:
        cfg = self.quantization_config
        if self.plan is None:
            return compress_lossy(name, tensor, self.stages or cfg.pipeline(), cfg.coder, cfg.block_size)
        return compress_lossy(name, tensor, self.plan.pipeline(name), cfg.coder, cfg.block_size,
                              importance=self.plan.importance(name, tensor.shape), hessian=self.plan.hessian(name),
                              row_importance=self.plan.row_importance(name), calibration=self.plan.info)

    def encode_weight(self, name: str, tensor: torch.Tensor, keep: bool = True) -> EncodedTensor:
        """Encode ``tensor`` with this config's coder and block size; ``keep`` it for the next save."""
        cfg = self.quantization_config
        enc = encode(tensor.detach(), coder=cfg.coder, block_size=cfg.block_size, name=name)
        if keep:
            self.encoded[name] = enc
        return enc

    def get_state_dict_and_metadata(self, model: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The shard tensors under their checkpoint names and the shard metadata (see ``_save_state``)."""
        add_guard(model.config)
        return checkpoint_state(self, model)

    def compression_stats(self) -> dict[str, Any]:
        """Sizes of the compressed weights this quantizer holds (lossless encodings and lossy weights).

        Keys: ``tensors``, ``original_bytes``, ``stored_bytes``, ``ratio``, ``bits_per_weight`` (stored bits
        over the weights they replace, everything counted) and ``lossless`` (False once any weight is lossy).
        """
        entries = [*self.encoded.values(), *self.lossy.values()]
        original = sum(e.original_nbytes for e in entries)
        stored = sum(e.nbytes for e in entries)
        numel = sum(e.numel for e in entries)
        return {
            "tensors": len(entries),
            "original_bytes": original,
            "stored_bytes": stored,
            "ratio": stored / original if original else 1.0,
            "bits_per_weight": 8.0 * stored / numel if numel else 0.0,
            "lossless": not self.lossy and self.quantization_config.is_lossless,
        }

    def tensor_bits(self) -> dict[str, float]:
        """Effective bits/weight of every compressed weight held, everything counted, by name."""
        out = {name: 8.0 * e.nbytes / max(e.numel, 1) for name, e in self.encoded.items()}
        out.update({name: e.bits_per_weight for name, e in self.lossy.items()})
        return out

    # -- capabilities -------------------------------------------------------------------------
    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        # Decoded weights are ordinary tensors (changed ones are re-encoded on save). On the fly the encoded
        # weights stay frozen and adapters train on top (llmcomp_hf.lora_for_compressed), as on a 4-bit base.
        return True

    @property
    def is_compileable(self) -> bool:
        # On the fly, compiled graphs decode through the custom ops of _graph_ops (llmcomp::decode).
        return True

    def _dequantize(self, model: Any, dtype: torch.dtype | None = None) -> Any:
        """A plain model: compressed layers (on the fly) decoded in place; the encodings, card hooks and
        (through ``remove_quantization_config``) the config's ``quantization_config`` and guard go."""
        decoded = decompress_modules(model)
        hf_compat.retie(model, self._untied)
        self._untied = {}
        if decoded:
            tie = getattr(model, "tie_weights", None)
            if callable(tie):
                tie()
            logger.info("llmcomp: decoded %d compressed layers in place", len(decoded))
        _save_hooks.uninstall(model)
        self.encoded.clear()
        self.lossy.clear()
        self.fingerprints.clear()
        return model


def _serialized_names(lossy_names: set[str], keys: list[str]) -> dict[str, list[str]]:
    """``serialized_names`` with the lossy part keys found in the shards, relative to their module.

    The loader's converter needs every source name up front: ``weight.llmcomp_transform`` and
    ``weight.<part>.llmcomp_data|index|header`` for the parts this checkpoint holds.
    """
    names = set(LlmcompHfQuantizer.serialized_names["weight"])
    if not lossy_names:
        return {"weight": list(LlmcompHfQuantizer.serialized_names["weight"])}
    for key in keys:
        owner = transform_base(key)
        pos = key.find(".")
        while owner is None and pos != -1:  # the lossy weight whose name prefixes the key
            owner = key[:pos] if key[:pos] in lossy_names else None
            pos = key.find(".", pos + 1)
        if owner is not None and owner.rpartition(".")[2] == "weight":
            names.add("weight" + key[len(owner):])
    return {"weight": ["weight"] + sorted(names - {"weight"})}


def _tag(model: Any, config: Any) -> None:
    """Hub tags that say what was done (``push_to_hub`` writes them into the card it generates)."""
    stages = [str(stage.get("transform", "stage")) for stage in getattr(config, "stages", []) if isinstance(stage, dict)]
    tags = ["llmcomp", "lossless"] if not stages else ["llmcomp", "lossy", *dict.fromkeys(stages)]
    if hasattr(model, "add_model_tags"):
        model.add_model_tags(tags)

