"""config.json and model card of a decompressed lossy checkpoint: they say the weights are a reconstruction.

``llmcomp decompress`` of a lossy checkpoint writes dense weights that are the lossy stages' output,
not the original model. The config keeps that fact under ``RECON_KEY`` (with the stages and the
``quantization_config`` they came from); the card says it in words and YAML (``RECON_KEY`` mapping,
``lossy`` and ``reconstruction`` tags), with the stored bits/weight and error of every tensor. The card
is deliberately not an llmcomp card (no ``llmcomp`` mapping), so ``llmcomp push`` never re-renders it
as a compressed, let alone lossless, one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RECON_KEY = "llmcomp_reconstruction"


def reconstruction_figures(qc: dict[str, Any] | None, headers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the weights are: stages, source config, average stored bits/weight (weighted by size), tensors."""
    from llmcomp_hf.card import stage_names

    numel = {n: _numel(h) for n, h in headers.items()}
    stored = sum(float(h.get("stored_bytes", 0)) for h in headers.values())
    total = sum(numel.values())
    return {
        "lossy": True,
        "note": "weights are the reconstruction of lossy-compressed weights, not the original ones",
        "stages": stage_names((qc or {}).get("stages")) or _header_stages(headers),
        "lossy_tensors": len(headers),
        "bits_per_weight": round(8.0 * stored / total, 4) if total else None,
        "quantization_config": qc,
    }


def write_reconstruction_files(out: Path, cfg: dict[str, Any] | None, card: Any, headers: dict[str, dict[str, Any]]) -> None:
    """Write ``config.json`` (no quantization_config, a ``RECON_KEY`` entry) and ``README.md`` into ``out``."""
    from llmcomp_hf.stream.files import CARD_NAME, plain_config
    from llmcomp_hf.stream.source import CONFIG_NAME, write_json

    qc = (cfg or {}).get("quantization_config")
    figures = reconstruction_figures(qc if isinstance(qc, dict) else None, headers)
    if cfg is not None:
        write_json(out / CONFIG_NAME, {**plain_config(cfg), RECON_KEY: figures})
    (out / CARD_NAME).write_text(render_reconstruction_card(figures, headers, card), encoding="utf-8")


def render_reconstruction_card(figures: dict[str, Any], headers: dict[str, dict[str, Any]], card: Any = None) -> str:
    """Card text: YAML (base model and license carried from the compressed checkpoint's card) and a table."""
    from huggingface_hub import ModelCardData

    from llmcomp_hf.card import CARRIED_KEYS

    meta = card.data.to_dict() if card is not None else {}
    base = meta.get("base_model")
    extra = {k: v for k, v in meta.items() if k in CARRIED_KEYS and v}
    stages = list(figures["stages"])
    data = ModelCardData(
        base_model=base or None,
        tags=["llmcomp", "lossy", "reconstruction", *dict.fromkeys(stages)],
        **{"library_name": "transformers", **extra}, **{RECON_KEY: {k: v for k, v in figures.items() if k != "quantization_config"}},
    )
    origin = f"[{base}](https://huggingface.co/{base})" if isinstance(base, str) and base else "the original model"
    bpw = figures["bits_per_weight"]
    lines = [
        "---", data.to_yaml(), "---", "",
        "# Lossy reconstruction (llmcomp)", "",
        f"These are **not the original weights** of {origin}: {figures['lossy_tensors']} weights are the "
        f"**lossy reconstruction** made by `llmcomp decompress` from a checkpoint compressed with the lossy stages "
        f"{' → '.join(stages) or '(unknown)'}"
        + (f" ({bpw:.3f} bits/weight as stored)" if bpw is not None else "")
        + ". They equal what loading the compressed checkpoint gives; outputs differ from the original model's.",
        "", "| tensor | shape | bits/weight (stored) | relative MSE |", "|---|---|---:|---:|",
    ]
    for name, h in headers.items():
        shape = "x".join(str(d) for d in h.get("shape", []))
        rel = h.get("rel_mse")
        lines.append(f"| {name} | {shape} | {h.get('bits_per_weight', 'n/a')} | "
                     f"{'n/a' if rel is None else f'{rel:.3g}'} |")
    return "\n".join(lines) + "\n"


def _numel(header: dict[str, Any]) -> int:
    n = 1
    for d in header.get("shape", []):
        n *= int(d)
    return n


def _header_stages(headers: dict[str, dict[str, Any]]) -> list[str]:
    from llmcomp_hf.card import stage_names

    first = next(iter(headers.values()), {})
    config = (first.get("meta") or {}).get("config")
    return stage_names([config]) if isinstance(config, dict) else []


__all__ = ["RECON_KEY", "reconstruction_figures", "render_reconstruction_card", "write_reconstruction_files"]
