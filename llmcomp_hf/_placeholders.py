"""On-the-fly loading helpers: compressed twins with empty buffers, and their validation after load."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from llmcomp_hf import _hf_compat as hf_compat
from llmcomp_hf.compressed_fused import CompressedFused
from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.format.inventory import Inventory
from llmcomp_hf._fused_placement import place_fused
from llmcomp_hf._stored_parts import StoredParts
from llmcomp_hf.format.shard import part_key
from llmcomp_hf.module_swap import compressed_module, tied_twin
from llmcomp_hf.modules import EncodedWeight

logger = logging.getLogger(__name__)


@dataclass
class Placement:
    """What ``place_compressed`` decided: weights to decode at load, and tied copies kept compressed."""

    decode: list[str] = field(default_factory=list)  # names as the loader's converters see them
    ties: dict[str, str] = field(default_factory=dict)  # tied copy -> the weight whose encoding it reads
    untied: dict[str, str] = field(default_factory=dict)  # what hf_compat.untie took out (put back by dequantize)
    unused_converters: list[Any] = field(default_factory=list)  # model converters whose weights all stay encoded


def install_placeholders(model: torch.nn.Module, placement: dict[str, str], parts: StoredParts
                         ) -> tuple[list[str], dict[str, EncodedWeight]]:
    """Swap modules for compressed twins with empty buffers: ``placement`` maps each model weight name
    to its checkpoint name (see ``StoredParts.placeholder``).

    Returns the model weight names that cannot stay compressed (no such parameter, a module without a
    compressed twin), which the loader decodes, and the placeholder of each other.
    """
    decoded, installed = [], {}
    for name, stored in placement.items():
        module = _weight_module(model, name)
        twin = None
        if module is not None:
            placeholder = parts.placeholder(stored, module.weight.dtype)
            twin = compressed_module(module, placeholder)
        if twin is None:
            decoded.append(name)
            continue
        _replace(model, name, twin)
        installed[name] = placeholder
    return decoded, installed


def place_compressed(model: torch.nn.Module, conversions: list[Any], inventory: Inventory,
                     plain_keys: list[str] = ()) -> Placement:
    """On the fly: swap in a compressed twin wherever transformers will load a compressed weight.

    Each weight's parts follow transformers' own renaming (vision towers, multimodal wrappers) to the
    module that receives them. Tied copies (``lm_head`` of tied embeddings) get a twin that reads the
    encoded weight of the layer they are tied to, when the checkpoint stores that one weight of the
    group (``plain_keys``: its other tensors, to check). Weights a model converter merges (MoE experts)
    stay encoded in a ``CompressedFused`` that merges them per forward where it can (``_fused_placement``).
    The others, ties that cannot share one encoded weight and modules without a compressed twin are
    decoded at load instead, and counted in one log line.
    """
    tied = hf_compat.tied_weights(model)
    suffix = len(part_key("", "data"))
    lossless = inventory.lossless
    placement = hf_compat.loaded_names([part_key(name, "data") for name in lossless], conversions, model)
    stored = {final[:-suffix] for _, final, _ in placement.values()}
    stored |= {final for _, final, _ in hf_compat.loaded_names(plain_keys, conversions, model).values()}
    keep: dict[str, str] = {}
    renamed_of: dict[str, str] = {}
    result = Placement()
    merged = []
    for name in lossless:
        renamed, final, by_converter = placement[part_key(name, "data")]
        renamed, final = renamed[:-suffix], final[:-suffix]
        group = tie_group(final, tied)
        if by_converter:
            merged.append(name)
        elif group and not _can_share(model, final, group, stored):
            result.decode.append(renamed)  # transformers ties it once decoded
        else:
            keep[final] = name
            renamed_of[final] = renamed
    with StoredParts(inventory.part_files) as parts:
        decoded, installed = install_placeholders(model, keep, parts)
        result.unused_converters, merged = place_fused(model, conversions, merged, plain_keys, parts)
    result.decode += [renamed_of[final] for final in decoded]
    for final, placeholder in installed.items():
        for copy in tie_group(final, tied) - {final}:
            _replace(model, copy, tied_twin(_weight_module(model, copy), placeholder))
            result.ties[copy] = final
    result.untied = hf_compat.untie(model, set(result.ties) | set(result.ties.values()))
    if merged or result.decode:
        logger.warning("llmcomp: %d of %d compressed weights cannot stay compressed in %s (merged on load by "
                       "other than stacking, tied differently, or no compressed twin) and are decoded at load",
                       len(merged) + len(result.decode), len(lossless), type(model).__name__)
    return result


def tie_kept(model: torch.nn.Module, swapped: list[str]) -> dict[str, str]:
    """After ``keep_compressed``: the tied copies of each swapped weight read its encoded weight too, when
    their layers can (same shape and dtype), instead of holding the dense tensor. Returns the ties taken
    out of the model's tie map (``hf_compat.untie``)."""
    tied = hf_compat.tied_weights(model)
    shared: set[str] = set()
    for name in swapped:
        encoded = model.get_submodule(name)
        for copy in tie_group(name, tied) - {name}:
            module = _weight_module(model, copy)
            if module is None or (tuple(module.weight.shape), module.weight.dtype) != (tuple(encoded.shape), encoded.dtype):
                continue
            twin = tied_twin(module, encoded)
            if twin is not None:
                _replace(model, copy, twin)
                shared |= {copy, name}
    return hf_compat.untie(model, shared)


def tie_group(name: str, tied: dict[str, str]) -> set[str]:
    """Every weight tied with ``name`` (``tied``: ``{copy: source}``), ``name`` included; empty if none."""
    source = tied.get(name, name)
    group = {copy for copy, src in tied.items() if src == source}
    return group | {source} if group else set()


def _can_share(model: torch.nn.Module, name: str, group: set[str], stored: set[str]) -> bool:
    """The other weights of ``name``'s tie group are not in the checkpoint and their layers can read
    ``name``'s encoded weight: twins of one shape and dtype."""
    if any(other in stored for other in group - {name}):
        return False  # stored twice: transformers compares them and may not tie; decoding keeps its rules
    modules = [_weight_module(model, member) for member in group]
    if any(m is None for m in modules) or len({(tuple(m.weight.shape), m.weight.dtype) for m in modules}) != 1:
        return False
    probe = EncodedWeight.placeholder(name, (0, 0, 0))
    return all(compressed_module(m, probe) is not None for m in modules)


def _weight_module(model: torch.nn.Module, name: str) -> torch.nn.Module | None:
    """The module whose ``weight`` parameter is ``name`` (None when there is no such parameter)."""
    module_name, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if attr == "weight" else None
    except AttributeError:
        return None
    return module if module is not None and isinstance(module._parameters.get("weight"), torch.nn.Parameter) else None


def _replace(model: torch.nn.Module, weight_name: str, twin: torch.nn.Module) -> None:
    module_name = weight_name.rpartition(".")[0]
    parent_name, _, child = module_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, twin)


def check_encoded_modules(model: torch.nn.Module, verify: bool, file_of: Any) -> None:
    """Validate every encoded weight once (and check its checksum with a decode into scratch), and that the
    weights of each ``CompressedFused`` merge into the parameters its module expects."""
    fused = []
    for module_name, module in model.named_modules():
        if isinstance(module, CompressedFused):
            fused.append(module)
        if not isinstance(module, EncodedWeight):
            continue
        try:
            declared = tuple(module.encoded.shape)  # parses and validates the header and index
            expected = getattr(module, "expected_shape", declared)
            if declared != tuple(expected):
                raise FormatError(
                    f"stored weight declares shape {list(declared)} where the model expects {list(expected)}"
                    f"{where(module._name, None)}; the checkpoint does not belong to this model or is damaged"
                )
            if verify:  # a transient full decode, not the shared scratch (it would stay embedding-sized)
                module.decode(verify=True)
        except FormatError as exc:
            raise type(exc)(f"{exc}{where(None, file_of(module_name))}") from exc
    for module in fused:  # once every weight's header is known good
        module.check(file_of)


__all__ = ["Placement", "check_encoded_modules", "install_placeholders", "place_compressed", "tie_group", "tie_kept"]
