"""Which compressed weights of a checkpoint went into a parameter while transformers loaded it.

transformers only logs checkpoint keys that match no parameter (UNEXPECTED) and initialises the
parameters they were meant for at random (MISSING); for a compressed weight that is never right. The
loader notes each stored header it decodes (or each compressed module filled on the fly); after loading,
every compressed weight of the checkpoint must have been noted once, or ``check`` raises naming it.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import torch

from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.format.inventory import Inventory
from llmcomp_hf.format.shard import part_key, transform_key

logger = logging.getLogger(__name__)


class Ledger:
    """The stored headers decoded so far, checked against the checkpoint's inventory after loading."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self._seen: list[torch.Tensor] = []  # compared by content only when the count is off

    def note(self, header: torch.Tensor) -> None:
        """The compressed weight stored with this header (or lossy transform header) was loaded."""
        self._seen.append(header)

    def check(self, model: torch.nn.Module) -> None:
        """Raise FormatError naming every compressed weight that went into no parameter of ``model``.

        A weight under a top-level module the model class does not have (``lm_head`` for ``AutoModel``)
        is left out with a warning, as transformers does.
        """
        weights = self.inventory.weights
        if len(self._seen) == len(weights):
            return  # the loader routes each checkpoint key to one parameter at most, so counts suffice
        left = Counter(_header_bytes(header) for header in self._seen)
        orphans = []
        for name, file in sorted(weights.items()):
            key = transform_key(name) if name in self.inventory.lossy else part_key(name, "header")
            stored = _header_bytes(read_tensor(file, key))
            if left[stored] > 0:
                left[stored] -= 1
            elif in_absent_head(model, name):
                logger.warning("llmcomp: %s (%s) belongs to a part of the checkpoint that %s does not have; "
                               "not loaded", name, file, type(model).__name__)
            else:
                orphans.append(name)
        if orphans:
            raise FormatError(
                f"{len(orphans)} compressed weight(s) of this checkpoint match no parameter of {type(model).__name__}"
                f"{where(orphans[0], weights[orphans[0]])} (all: {', '.join(orphans[:8])}"
                f"{', ...' if len(orphans) > 8 else ''}); loading them would leave random weights. Load the "
                "checkpoint with the model class of its config.json, or restore the shard if a key was edited"
            )


def in_absent_head(model: Any, name: str) -> bool:
    """True when checkpoint weight ``name`` lies under a top-level module this model class lacks.

    E.g. ``lm_head.weight`` or ``cls.predictions...`` when a base ``AutoModel`` loads a checkpoint saved
    with a head: transformers leaves such keys unused by design. A weight under a module the model does
    have (``model.layers.0.mlp.up_prxj.weight``) is not such a case.
    """
    segments = name.split(".")
    prefix = getattr(model, "base_model_prefix", "") or ""
    children = dict(model.named_children())
    if prefix and prefix in children:
        children.update(dict(children[prefix].named_children()))
    elif prefix and segments[0] == prefix and len(segments) > 1:
        segments = segments[1:]  # a base model loading keys saved with its prefix
    return segments[0] not in children


def _header_bytes(header: torch.Tensor) -> bytes:
    return header.detach().cpu().contiguous().numpy().tobytes()


def read_tensor(file: str, key: str) -> torch.Tensor:
    """One tensor of a shard (small ones: headers), read on its own."""
    from llmcomp_hf.format.safetensors_file import SafetensorsFile

    with SafetensorsFile(file) as handle:
        return handle.get_tensor(key)



__all__ = ["Ledger", "in_absent_head", "read_tensor"]
