"""The guard that makes a compressed checkpoint fail loudly when llmcomp-hf is not imported.

Without the plugin, transformers 5.x only logs "Unknown quantization type" for our
``quantization_config`` and would load the model with randomly initialised weights. To prevent that,
a saved ``config.json`` also holds ``fusion_config`` with one entry whose name is the instruction below.
transformers validates ``fusion_config`` names in every ``from_pretrained`` and raises
``ValueError("Unknown fusion type: <name>")``, so the user reads what to do.

With the plugin registered, the quantizer sees the config before that check (through
``HfQuantizer.update_attn_implementation``, called by ``get_hf_quantizer``) and removes the entry;
it is written back when the model is saved. Real fusion entries are kept untouched.
"""

from __future__ import annotations

from typing import Any

GUARD_KEY = (
    "llmcomp-hf: this checkpoint holds llmcomp-compressed weights; `pip install llmcomp-hf` and "
    "`import llmcomp_hf` before from_pretrained (loading it without llmcomp-hf would give random weights)"
)


def strip_guard(config: Any) -> None:
    """Remove the guard entry from ``config.fusion_config`` (drop the attribute if nothing else is left)."""
    fusion = getattr(config, "fusion_config", None)
    if isinstance(fusion, dict) and GUARD_KEY in fusion:
        rest = {k: v for k, v in fusion.items() if k != GUARD_KEY}
        if rest:
            config.fusion_config = rest
        else:
            delattr(config, "fusion_config")


def add_guard(config: Any) -> None:
    """Put the guard entry into ``config.fusion_config`` (kept alongside any real fusion entries)."""
    fusion = getattr(config, "fusion_config", None)
    fusion = dict(fusion) if isinstance(fusion, dict) else {}
    fusion[GUARD_KEY] = False
    config.fusion_config = fusion
