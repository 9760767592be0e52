"""Which source tensors get lossy stages: the quantizer's own selection, on a weightless model skeleton.

Lossy stages change weights, so ``llmcomp compress`` must pick exactly the weights that
``from_pretrained(src, quantization_config=config)`` would: the model class is built from
``config.json`` on the meta device (no memory, no weights) and ``_select.select_weights`` runs on it.
The dtype test uses the checkpoint's dtype (the integration loads with the checkpoint's dtype); tied
copies (``lm_head`` of tied embeddings) are left plain, as the quantizer leaves them.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from llmcomp_hf.config import LOSSY_DTYPES, CompressionConfig
from llmcomp_hf.format.safetensors_header import CODE_TO_NAME
from llmcomp_hf.stream.source import CheckpointError, ShardInfo


def skeleton(src: Path) -> Any:
    """The model of ``src/config.json`` (class from ``architectures``, else AutoModel) on the meta device."""
    import torch
    import transformers

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            cfg = transformers.AutoConfig.from_pretrained(src)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"lossy compression picks the weights as transformers does, from the model that {str(src / 'config.json')!r} "
            f"describes, and that config cannot be read ({exc}); fix config.json or compress losslessly"
        ) from exc
    arch = next(iter(getattr(cfg, "architectures", None) or []), None)
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    try:
        with torch.device("meta"):
            return cls(cfg) if isinstance(cls, type) else transformers.AutoModel.from_config(cfg)
    except (ValueError, TypeError, RuntimeError, ImportError) as exc:
        raise CheckpointError(
            f"cannot build the model class {arch or type(cfg).__name__!r} of {str(src)!r} to choose the weights for "
            f"the lossy stages ({type(exc).__name__}: {exc}); upgrade transformers or compress losslessly"
        ) from exc


def lossy_selection(src: Path, shards: list[ShardInfo], config: CompressionConfig) -> set[str]:
    """Checkpoint keys of the weights the lossy stages apply to (the quantizer's selection for ``config``)."""
    from llmcomp_hf._select import select_weights

    model = skeleton(src)
    # dtype is checked on the checkpoint below: the meta model is in the default dtype, not the checkpoint's
    wide = CompressionConfig(**{**config.to_dict(), "dtypes": list(LOSSY_DTYPES)})
    chosen = set(select_weights(model, wide)) - set(getattr(model, "all_tied_weights_keys", None) or {})
    prefix = f"{getattr(model, 'base_model_prefix', '') or ''}."
    out = set()
    for shard in shards:
        for t in shard.tensors:
            key = t.name
            names = {key, prefix + key, key[len(prefix):] if key.startswith(prefix) else key}
            if names & chosen and CODE_TO_NAME.get(t.dtype) in config.dtypes and t.numel >= config.min_numel:
                out.add(key)
    return out


__all__ = ["lossy_selection", "skeleton"]
