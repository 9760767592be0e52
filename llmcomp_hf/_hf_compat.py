"""Every place llmcomp-hf relies on a transformers internal, in one module.

Public hooks (``HfQuantizer``, ``register_quantizer``, ``QuantizationConfigMixin``) are used where they
belong; what follows are the non-public names and attributes. Each has a test in
``tests/integration/test_hf_compat.py``, so a transformers release that changes one fails that test
by name. Cheap to import: torch and transformers load inside the functions that need them.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from llmcomp_hf.errors import FormatError, LlmcompError

if TYPE_CHECKING:
    import torch

SUPPORTED_TRANSFORMERS = ">=5.21,<6"  # 5.20 leaves per-expert (MoE) weights out of the model's merge converters


def check_transformers_version(version: str | None = None) -> None:
    """Raise LlmcompError unless ``version`` (default: the installed one) is in SUPPORTED_TRANSFORMERS."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if version is None:
        import transformers

        version = transformers.__version__
    try:
        parsed = Version(version)
    except InvalidVersion as exc:
        raise LlmcompError(f"cannot parse the transformers version {version!r}") from exc
    if not SpecifierSet(SUPPORTED_TRANSFORMERS).contains(parsed, prereleases=True):
        raise LlmcompError(
            f"llmcomp-hf supports transformers {SUPPORTED_TRANSFORMERS}, found {version}: install a supported "
            f'version (pip install "transformers{SUPPORTED_TRANSFORMERS}") or upgrade llmcomp-hf'
        )


# -- the loader -----------------------------------------------------------------------------------


def conversion_ops_base() -> type:
    """``transformers.core_model_loading.ConversionOps``: base class of the loader's tensor ops."""
    from transformers.core_model_loading import ConversionOps

    return ConversionOps


def weight_converter_class() -> type:
    """``transformers.core_model_loading.WeightConverter`` (source patterns -> target, with ops)."""
    from transformers.core_model_loading import WeightConverter

    return WeightConverter


def loader_key_order(key: str) -> Any:
    """The sort key the loader iterates checkpoint keys by (``dot_natural_key``)."""
    from transformers.core_model_loading import dot_natural_key

    return dot_natural_key(key)


def module_and_attr(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    """``(module, attribute)`` of parameter ``name`` (``get_module_from_name``); AttributeError if absent."""
    from transformers.quantizers.quantizers_utils import get_module_from_name

    return get_module_from_name(model, name)


def ignore_unexpected(model: torch.nn.Module, pattern: str) -> Any:
    """Add ``pattern`` to the model's unexpected-key patterns; returns what to pass to ``restore_unexpected``."""
    before = getattr(model, "_keys_to_ignore_on_load_unexpected", None)
    model._keys_to_ignore_on_load_unexpected = set(before or ()) | {pattern}
    return before


def restore_unexpected(model: torch.nn.Module, before: Any) -> None:
    model._keys_to_ignore_on_load_unexpected = before


# -- weight conversions (key renames, MoE expert merges) ------------------------------------------


def model_conversions(model: torch.nn.Module) -> list[Any] | None:
    """The conversions the loader applied (``model._weight_conversions``); None when never loaded."""
    return getattr(model, "_weight_conversions", None)


def set_model_conversions(model: torch.nn.Module, conversions: list[Any] | None) -> None:
    """Set what ``save_pretrained`` reverts (an empty list: nothing, the names are already final)."""
    model._weight_conversions = conversions


def without_ops(conversions: Iterable[Any], ours: Iterable[Any], op_types: tuple[type, ...], suffix_pattern: str) -> list[Any]:
    """The model's own conversions as they were before our quantizer joined them.

    Drops our converters (``ours``); a model converter into which transformers inserted our decode op
    (``HfQuantizer.update_weight_conversions``, e.g. the MoE expert merge) is copied back without that op
    and without our part names in its sources, so that reversing it on save splits plain tensors.
    """
    out = []
    ours = list(ours)
    suffix = re.compile(suffix_pattern)
    for conv in conversions or []:
        if any(conv is o for o in ours):
            continue
        ops = list(getattr(conv, "operations", []) or [])
        if ops and any(isinstance(op, op_types) for op in ops):
            sources = [s for s in conv._original_source_patterns if not suffix.search(s)]
            copy = conv.copy(sources, list(conv._original_target_patterns),
                             operations=[op for op in ops if not isinstance(op, op_types)])
            copy._was_used = conv.was_used()
            conv = copy
        out.append(conv)
    return out


def loaded_names(keys: Iterable[str], conversions: list[Any] | None, model: torch.nn.Module) -> dict[str, tuple[str, str, bool]]:
    """Where the loader puts each checkpoint key: ``{key: (renamed, final, merged)}``.

    ``renamed``: after the model's renamings (what converter patterns see); ``final``: the model's name
    once the base-model prefix is added or stripped; ``merged``: a converter (e.g. an MoE expert merge)
    takes the key, so it ends in a fused parameter, not one of its own. (``rename_source_key``.)
    """
    from transformers.core_model_loading import WeightConverter, WeightRenaming, apply_converters, apply_renamings

    renamings = [c for c in conversions or [] if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions or [] if isinstance(c, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", "") or ""
    meta_state = model.state_dict()
    out = {}
    for key in keys:
        renamed = apply_renamings(key, renamings)
        _, pattern = apply_converters(renamed, converters)
        final = renamed
        if prefix and renamed.startswith(prefix + ".") and renamed[len(prefix) + 1:] in meta_state:
            final = renamed[len(prefix) + 1:]
        elif prefix and f"{prefix}.{renamed}" in meta_state:
            final = f"{prefix}.{renamed}"
        out[key] = (renamed, final, pattern is not None)
    return out


def merge_targets(keys: Iterable[str], conversions: list[Any] | None, model: torch.nn.Module
                  ) -> dict[str, tuple[Any, str, str, str | None]]:
    """For each checkpoint weight a model converter merges: ``{key: (converter, source pattern, target, path)}``,
    the converter, the pattern it matched, the model parameter it merges the key into (``rename_source_key``)
    and the key's path below that parameter's module (``0.w1.weight``; None if it is not below it). Keys no
    converter takes are left out."""
    from transformers.core_model_loading import (WeightConverter, WeightRenaming, apply_converters, apply_renamings,
                                                 rename_source_key)

    renamings = [c for c in conversions or [] if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions or [] if isinstance(c, WeightConverter)]
    by_pattern = {pattern: c for c in converters for pattern in c.source_patterns}
    prefix = getattr(model, "base_model_prefix", "") or ""
    meta_state = model.state_dict()
    out = {}
    for key in keys:
        target, pattern = rename_source_key(key, renamings, converters, prefix, meta_state)
        if pattern is None or pattern not in by_pattern:
            continue
        renamed = apply_renamings(key, renamings)
        module = apply_converters(renamed, converters)[0].rpartition(".")[0]
        path = renamed[len(module) + 1:] if module and renamed.startswith(module + ".") else None
        out[key] = (by_pattern[pattern], pattern, target, path)
    return out


def runs_pure_merge(converter: Any) -> bool:
    """``converter`` only stacks, concatenates, interleaves or transposes its sources into one target, using
    nothing but the tensors (so it can run again on decoded tensors, at every forward)."""
    from transformers.core_model_loading import Concatenate, Interleave, MergeModulelist, Transpose

    ops = list(getattr(converter, "operations", []) or [])
    pure = (MergeModulelist, Concatenate, Interleave, Transpose)
    return (len(converter.target_patterns) == 1 and bool(ops)
            and all(type(op) in pure and not getattr(op, "check_dims", False) for op in ops))


def run_merge(converter: Any, tensors: dict[str, list[torch.Tensor]], layer_name: str) -> torch.Tensor:
    """The tensor ``converter``'s ops make of ``tensors`` (``{source pattern: tensors in load order}``), as in
    ``WeightConverter.convert``; ``converter`` must pass ``runs_pure_merge``."""
    collected: dict[str, Any] = dict(tensors)
    for op in converter.operations:
        collected = op.convert(collected, source_patterns=converter.source_patterns,
                               target_patterns=converter.target_patterns, full_layer_name=layer_name,
                               model=None, config=None, missing_keys=None)
    (tensor,) = collected.values()
    return tensor


def revert_conversions(model: torch.nn.Module, state: dict[str, torch.Tensor], conversions: list[Any] | None) -> dict[str, torch.Tensor]:
    """``state`` (model names) under the checkpoint names ``conversions`` were loaded from
    (``revert_weight_conversion``: renames undone, fused experts split back into one tensor each)."""
    from transformers.core_model_loading import revert_weight_conversion

    if not conversions:
        return dict(state)
    before = model_conversions(model)
    set_model_conversions(model, conversions)
    try:
        return revert_weight_conversion(model, state)
    finally:
        set_model_conversions(model, before)


def offloaded_parameter(model: torch.nn.Module, name: str) -> torch.Tensor:
    """A disk-offloaded parameter read back (``accelerate`` integration's ``load_offloaded_parameter``)."""
    from transformers.integrations.accelerate import load_offloaded_parameter

    return load_offloaded_parameter(model, name)


# -- models and configs ---------------------------------------------------------------------------


def quantization_config_being_merged() -> Any | None:
    """The ``quantization_config=`` that ``from_pretrained`` is merging with a checkpoint's own, if any.

    Read (never changed) from the argument ``quantization_config_from_args`` of transformers'
    ``AutoHfQuantizer.merge_quantization_configs``, a few frames up while it builds the checkpoint's
    config with ``from_dict``. None when called from anywhere else.
    """
    frame = sys._getframe(1)
    for _ in range(6):  # from_dict <- AutoQuantizationConfig.from_dict <- merge_quantization_configs, with slack
        if frame is None:
            return None
        if frame.f_code.co_name == "merge_quantization_configs":
            return frame.f_locals.get("quantization_config_from_args")
        frame = frame.f_back
    return None


def check_model_config(folder: str | os.PathLike) -> Any:
    """FormatError when transformers cannot read ``config.json`` (or ``generation_config.json``, which a
    generative model's ``from_pretrained`` reads) of ``folder``: it does so before any llmcomp code runs,
    so its own error would be transformers'."""
    import transformers
    from transformers import AutoConfig, GenerationConfig

    folder = os.fspath(folder)
    readers = [("config.json", AutoConfig)]
    if os.path.lexists(os.path.join(folder, "generation_config.json")):
        readers.append(("generation_config.json", GenerationConfig))
    model_config = None
    for name, reader in readers:
        try:
            config = reader.from_pretrained(folder, local_files_only=True)
            if name == "config.json":
                model_config = config
                _check_fusion_config(config)
        except Exception as exc:  # noqa: BLE001 - transformers and huggingface_hub raise many types here
            detail = " ".join(str(exc).split())[:300]
            raise FormatError(
                f"transformers {transformers.__version__} cannot read {os.path.join(folder, name)!r} "
                f"({type(exc).__name__}: {detail}), so from_pretrained would fail; restore {name} from the "
                "original checkpoint"
            ) from exc
    return model_config  # the guard entry removed, as from_pretrained sees it


def configured_shapes(config: Any, folder: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """``{state_dict key: shape}`` of the model ``config`` (``check_model_config``'s, read from ``folder``) describes (its first ``architectures``
    class, built on the meta device: no memory), or ``{}`` when transformers has no such class.

    from_pretrained refuses a stored weight of another shape than its parameter; ``llmcomp verify``
    compares the keys that match exactly (renamed checkpoint keys are left to the loader).
    """
    import torch
    import transformers

    folder = os.fspath(folder)
    archs = getattr(config, "architectures", None)
    cls = getattr(transformers, archs[0], None) if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    if cls is None or not hasattr(cls, "_from_config"):
        return {}
    try:
        with torch.device("meta"):
            model = cls._from_config(config)
    except Exception as exc:  # noqa: BLE001 - a config transformers reads but cannot build a model from
        raise FormatError(f"transformers {transformers.__version__} cannot build {archs[0]} from "
                          f"{os.path.join(folder, 'config.json')!r} ({type(exc).__name__}: {str(exc)[:200]}), so "
                          "from_pretrained would fail; restore config.json from the original checkpoint") from exc
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _check_fusion_config(config: Any) -> None:
    """transformers' check of ``fusion_config`` in from_pretrained, after the quantizer removed its guard entry."""
    from llmcomp_hf._guard import strip_guard

    strip_guard(config)
    fusion = getattr(config, "fusion_config", None)
    if fusion:
        from transformers import fusion_mapping

        validate = getattr(fusion_mapping, "_iter_enabled_fusions", None)
        if validate is not None:  # transformers >= 5.21; older ones have no fusion_config
            validate(fusion)


def tied_weights(model: torch.nn.Module) -> dict[str, str]:
    """``{tied copy: source}`` of the model (``all_tied_weights_keys``)."""
    return dict(getattr(model, "all_tied_weights_keys", None) or {})


def mark_initialized(module: torch.nn.Module) -> None:
    """Tell the loader's weight initialisation (``_initialize_weights``) to leave ``module`` alone."""
    module._is_hf_initialized = True


def untie(model: torch.nn.Module, names: Iterable[str]) -> dict[str, str]:
    """Take the ties among ``names`` out of the model's tie map (``all_tied_weights_keys``, which the loader
    and ``tie_weights(recompute_mapping=False)`` apply); returns the ``{copy: source}`` entries taken out."""
    names = set(names)
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    taken = {copy: source for copy, source in tied.items() if copy in names and source in names}
    for copy in taken:
        del tied[copy]
    return taken


def retie(model: torch.nn.Module, taken: dict[str, str]) -> None:
    """Put back the entries ``untie`` took out of the model's tie map."""
    if taken:
        model.all_tied_weights_keys.update(taken)


def config_origin(config: Any) -> tuple[str | None, str | None]:
    """``(name_or_path, commit)`` a config was loaded from (``_name_or_path``, ``_commit_hash``).

    A model class's own ``from_pretrained`` (``LlamaForCausalLM.from_pretrained(path)``, not an Auto class)
    builds its config without ``_name_or_path`` and sets it only after the quantizer has seen the config;
    then the path is read (never changed) from that ``from_pretrained``'s argument, a few frames up.
    """
    name = getattr(config, "_name_or_path", None) or _loading_from(sys._getframe(1))
    return name, getattr(config, "_commit_hash", None)


def _loading_from(frame: Any) -> str | None:
    """``pretrained_model_name_or_path`` of the transformers ``from_pretrained`` running above ``frame``."""
    for _ in range(8):  # _early_prefetch <- update_attn_implementation <- get_hf_quantizer <- from_pretrained
        if frame is None:
            return None
        if frame.f_code.co_name == "from_pretrained" and frame.f_globals.get("__name__") == "transformers.modeling_utils":
            value = frame.f_locals.get("pretrained_model_name_or_path")
            return os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
        frame = frame.f_back
    return None


__all__ = [
    "SUPPORTED_TRANSFORMERS",
    "check_model_config",
    "configured_shapes",
    "check_transformers_version",
    "config_origin",
    "conversion_ops_base",
    "ignore_unexpected",
    "loaded_names",
    "loader_key_order",
    "mark_initialized",
    "merge_targets",
    "model_conversions",
    "module_and_attr",
    "offloaded_parameter",
    "restore_unexpected",
    "retie",
    "quantization_config_being_merged",
    "revert_conversions",
    "run_merge",
    "runs_pure_merge",
    "set_model_conversions",
    "tied_weights",
    "untie",
    "weight_converter_class",
    "without_ops",
]
