"""What ``save_pretrained`` writes for a model loaded with llmcomp-hf: shard tensors and metadata.

The model's own conversions are reverted first (renames undone, fused MoE experts split into one tensor
per expert), then the tensors are compressed under their checkpoint names; saves decide from content
(``_select.fingerprint``) whether an encoding kept from the load can be written again.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import torch

from llmcomp_hf import _hf_compat as hf_compat
from llmcomp_hf._select import compresses_key, fingerprint, select_weights, shared_tied_targets, tensor_of
from llmcomp_hf.format.lossy import compress_lossy
from llmcomp_hf.format.shard import SHARD_METADATA, pack, plain_checksums
from llmcomp_hf.modules import EncodedWeight

if TYPE_CHECKING:
    from llmcomp_hf.quantizer import LlmcompHfQuantizer

logger = logging.getLogger(__name__)


def checkpoint_state(q: LlmcompHfQuantizer, model: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The shard tensors under their checkpoint names: compressed parts for selected weights, the rest as is.

    The model's own conversions are reverted first (renames undone, fused MoE experts split into one
    tensor per expert), then compressed: a tensor that is a model weight as a whole follows that
    weight's selection; one made by a conversion (an expert's slice) follows the rule ``llmcomp
    compress`` applies to checkpoint keys, so both paths store the same checkpoint. Encodings kept
    from compress-on-load are written when their weight still holds the same bytes; the others are
    encoded now and not kept (memory stays bounded by what the user asked to compress).
    """
    cfg = q.quantization_config
    tied = shared_tied_targets(model)
    targets = set(select_weights(model, cfg)) - set(tied)
    state = {name: t for name, t in model.state_dict().items() if not (name in tied and tied[name] in targets)}
    recast = _recast_weights(model, state, cfg)
    if q.conversions and any(t.device.type == "meta" for t in state.values()):
        state = {name: hf_compat.offloaded_parameter(model, name) if t.device.type == "meta" else t
                 for name, t in state.items()}
    whole = {_identity(t): name for name, t in state.items()}
    out: dict[str, torch.Tensor] = {}
    reused = encoded = 0
    for key, tensor in hf_compat.revert_conversions(model, state, q.conversions).items():
        name = whole.get(_identity(tensor))
        if name is None and compresses_key(key, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), cfg):
            out.update(pack(key, q.encode_weight(key, tensor, keep=False)))  # a slice of a fused weight
            encoded += 1
        elif name in recast:
            out.update(pack(key, q.encode_weight(key, tensor, keep=False)) if recast[name] else {key: tensor})
            encoded += recast[name]
        elif name is None or name not in targets:
            out[key] = tensor
        elif not cfg.is_lossless or name in q.lossy:
            out.update(_renamed(lossy_for_save(q, model, name, tensor), name, key))
        else:
            enc = q.encoded.get(name)
            if enc is not None and q.fingerprints.get(name) == fingerprint(tensor_of(model, name)):
                reused += 1
            else:
                q.encoded.pop(name, None)
                q.fingerprints.pop(name, None)
                if tensor.device.type == "meta":
                    tensor = hf_compat.offloaded_parameter(model, name)
                enc = q.encode_weight(name, tensor, keep=False)
                encoded += 1
            out.update(pack(key, enc))
    logger.info("llmcomp: saving %d compressed weights (%d reused, %d encoded)", reused + encoded, reused, encoded)
    # transformers drops tied copies (and _keys_to_ignore_on_save) after this: no checksum entry for those
    dropped = set(hf_compat.tied_weights(model)) | set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    return out, {**SHARD_METADATA, **plain_checksums({k: v for k, v in out.items() if k not in dropped})}


def lossy_for_save(q: LlmcompHfQuantizer, model: Any, name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """Shard tensors of lossy weight ``name``: the kept form while the weight is unchanged, else re-applied."""
    stored = q.lossy.get(name)
    param = tensor_of(model, name)
    unchanged = param is not None and (param.device.type == "meta" or q.fingerprints.get(name) == fingerprint(param))
    if stored is not None and unchanged:
        return stored.pack()
    if tensor.device.type == "meta":
        tensor = hf_compat.offloaded_parameter(model, name)
    if stored is not None:
        warnings.warn(
            f"weight {name!r} changed since it was compressed; saving re-applies the lossy stages to it, so the "
            "saved weight differs from the one in memory",
            stacklevel=3,
        )
    if q.plan is not None and q.plan.keys.get(name):
        return q.compress_lossy_weight(name, tensor)[0].pack()
    pipeline = q.stages or q.quantization_config.pipeline()
    if pipeline is None:  # a lossy checkpoint loaded with a lossless config: keep the stored stages
        from llmcomp_hf.transforms import config_from_dict

        pipeline = config_from_dict(stored.header["meta"]["config"])
    cfg = q.quantization_config
    fresh, _ = compress_lossy(name, tensor, pipeline, cfg.coder, cfg.block_size)
    return fresh.pack()


def _recast_weights(model: Any, state: dict[str, torch.Tensor], cfg: Any) -> dict[str, bool]:
    """Encoded weights converted to another dtype since they loaded (``dtype=``, ``.to(dtype)``): in ``state``,
    their stored parts are replaced by the weight as the model computes with it, to be saved as a decoded
    model would save it. Returns ``{weight name: whether the config compresses it}``."""
    recast = {}
    for name, module in model.named_modules():
        parts = [f"{name}.{buffer}" for buffer, _ in module.named_buffers(recurse=False)]
        if not isinstance(module, EncodedWeight) or not module.casts or parts[0] not in state:
            continue
        for part in parts:
            del state[part]
        state[name] = module.decoded()
        layer = model.get_submodule(name.rpartition(".")[0])
        kinds = set(cfg.module_types)
        recast[name] = any(c.__name__ in kinds for c in getattr(layer, "plain_type", type(layer)).__mro__) and \
            compresses_key(name, str(module.dtype).removeprefix("torch."), tuple(module.shape), cfg)
    return recast


def _identity(tensor: torch.Tensor) -> tuple[Any, ...]:
    """Same storage, offset, shape and dtype: the same tensor (a renamed weight keeps its tensor object)."""
    if tensor.device.type == "meta":
        return (id(tensor),)
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)


def _renamed(parts: dict[str, torch.Tensor], name: str, key: str) -> dict[str, torch.Tensor]:
    """Stored parts of weight ``name`` under checkpoint name ``key`` (their keys start with ``name``)."""
    return parts if name == key else {key + k[len(name):]: v for k, v in parts.items()}


__all__ = ["checkpoint_state", "lossy_for_save"]
