"""On-the-fly loading helpers: compressed twins with empty buffers, and their validation after load."""

from __future__ import annotations

import logging
from typing import Any

import torch

from llmcomp_hf import _hf_compat as hf_compat
from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.format.inventory import Inventory
from llmcomp_hf.format.shard import part_key, read_tensor_header
from llmcomp_hf.modules import EncodedWeight, compressed_module

logger = logging.getLogger(__name__)


def install_placeholders(model: torch.nn.Module, placement: dict[str, tuple[str, str]]) -> list[str]:
    """Swap modules for compressed twins with empty buffers: ``placement`` maps each model weight name
    to ``(its checkpoint name, shard)``.

    Buffer sizes come from the shard headers, so the loader fills them like any other tensor. Returns
    the model weight names that cannot stay compressed (no such parameter, a module without a
    compressed twin, or a stored dtype other than the model's, e.g. ``dtype=torch.float32`` for a bf16
    checkpoint); the loader decodes (and casts) those.
    """
    from safetensors import safe_open

    handles: dict[str, Any] = {}
    decoded = []
    try:
        for name, (stored, file) in placement.items():
            module_name, _, attr = name.rpartition(".")
            try:
                module = model.get_submodule(module_name) if attr == "weight" else None
            except AttributeError:
                module = None
            if module is None or not isinstance(module._parameters.get("weight"), torch.nn.Parameter):
                decoded.append(name)
                continue
            if file not in handles:
                handles[file] = safe_open(file, framework="pt")
            header = read_tensor_header(stored, handles[file].get_tensor(part_key(stored, "header")), file)
            if header["dtype"] != str(module.weight.dtype).removeprefix("torch."):
                decoded.append(name)  # loaded with another dtype=: decoded once and cast, not per forward
                continue
            sizes = tuple(int(handles[file].get_slice(part_key(stored, p)).get_shape()[0]) for p in ("data", "index", "header"))
            twin = compressed_module(module, EncodedWeight.placeholder(stored, sizes))
            if twin is None:
                decoded.append(name)
                continue
            parent_name, _, child = module_name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, twin)
    finally:
        handles.clear()
    return decoded


def place_compressed(model: torch.nn.Module, conversions: list[Any], inventory: Inventory) -> list[str]:
    """On the fly: swap in a compressed twin wherever transformers will load a compressed weight.

    Each weight's parts follow transformers' own renaming (vision towers, multimodal wrappers) to the
    module that receives them. Weights a model converter merges (MoE experts: that converter decodes
    them), tied weights and modules without a compressed twin are decoded at load instead, and counted
    in one log line. Returns the names (as the loader's converters see them) of those to decode.
    """
    tied = hf_compat.tied_weights(model)
    tied_names = set(tied) | set(tied.values())
    suffix = len(part_key("", "data"))
    lossless = inventory.lossless
    placement = hf_compat.loaded_names([part_key(name, "data") for name in lossless], conversions, model)
    keep: dict[str, tuple[str, str]] = {}
    renamed_of: dict[str, str] = {}
    decode: list[str] = []
    merged = 0
    for name, file in lossless.items():
        renamed, final, by_converter = placement[part_key(name, "data")]
        renamed, final = renamed[:-suffix], final[:-suffix]
        if by_converter:
            merged += 1
        elif final in tied_names:
            decode.append(renamed)
        else:
            keep[final] = (name, file)
            renamed_of[final] = renamed
    decode += [renamed_of[final] for final in install_placeholders(model, keep)]
    if merged + len(decode):
        logger.warning("llmcomp: %d of %d compressed weights cannot stay compressed in %s (merged on load, tied, "
                       "no compressed twin, or another dtype) and are decoded at load", merged + len(decode),
                       len(lossless), type(model).__name__)
    return decode


def check_encoded_modules(model: torch.nn.Module, verify: bool, file_of: Any) -> None:
    """Validate every encoded weight once (and check its checksum with a decode into scratch)."""
    for module_name, module in model.named_modules():
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


__all__ = ["check_encoded_modules", "install_placeholders", "place_compressed"]
