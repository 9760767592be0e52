"""Model cards for llmcomp checkpoints, rendered from the templates in ``model_cards/``.

The card's YAML block carries ``base_model``, ``base_model_relation: quantized``,
``library_name: transformers``, tags (``llmcomp`` plus ``lossless``, or ``lossy`` and the stage
names: a lossy model is never tagged or described as lossless) and an ``llmcomp`` mapping with the
figures (original/stored bytes, ratio, bits per weight, coder, format version, stages).

``write_card(save_dir, stats, base_model=...)`` is the entry point for ``llmcomp compress`` and for
the quantizer's save hook; ``stats_from_encoded`` builds the stats from a quantizer's encodings. A card
someone else wrote in that folder is never replaced: our facts are merged into it (``card_merge``).
``stream.restore_card(folder)`` re-derives the card from the shards, e.g. after sentence-transformers'
``save()`` wrote its own card over ours.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmcomp_hf._resources import resource_dir
from llmcomp_hf.card_merge import is_merged, merge_card, parse
from llmcomp_hf.errors import LlmcompError

logger = logging.getLogger(__name__)


class CardError(LlmcompError, ValueError):
    """A card cannot be written for this folder (not an llmcomp checkpoint)."""

CARD_NAME = "README.md"
TEMPLATE_DIR = resource_dir("model_cards")
CARD_KEY = "llmcomp"  # the YAML key holding the figures; marks a card written by llmcomp-hf
CARRIED_KEYS = ("license", "license_name", "license_link", "language", "pipeline_tag", "datasets", "library_name")
# a base card's library_name that still loads our folder (through transformers' from_pretrained); others -> transformers
LIBRARIES = ("transformers", "sentence-transformers")


@dataclass
class CardStats:
    """The figures a card states. Sizes count tensor bytes only (no JSON headers of the files).

    ``original_bytes``/``compressed_bytes`` cover every tensor of the checkpoint (tensors kept
    plain count on both sides); ``weights``/``weights_stored_bytes`` only the compressed tensors,
    for bits per weight.
    """

    original_bytes: int
    compressed_bytes: int
    weights: int = 0
    weights_stored_bytes: int = 0
    tensors: int = 0
    compressed_tensors: int = 0
    coder: str = "huffman"
    format_version: int = 1
    stages: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None  # the config's calibration_info (file, sha256, texts...)
    rel_mse: dict[str, float] | None = None  # lossy: measured relative weight error, "mean" and "max"

    @property
    def ratio(self) -> float:
        return self.compressed_bytes / self.original_bytes if self.original_bytes else 1.0

    @property
    def bits_per_weight(self) -> float | None:
        return 8.0 * self.weights_stored_bytes / self.weights if self.weights else None

    @property
    def lossless(self) -> bool:
        return not self.stages

    def figures(self) -> dict[str, Any]:
        """The ``llmcomp`` YAML mapping of the card."""
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "coder": self.coder,
            "mode": "lossless" if self.lossless else "lossy",
            "original_bytes": self.original_bytes,
            "compressed_bytes": self.compressed_bytes,
            "ratio": round(self.ratio, 4),
            "bits_per_weight": None if self.bits_per_weight is None else round(self.bits_per_weight, 3),
            "compressed_tensors": self.compressed_tensors,
            "tensors": self.tensors,
        }
        if self.stages:
            out["stages"] = list(self.stages)
        if self.calibration:
            out["calibration"] = dict(self.calibration)
        if self.rel_mse:
            out["weight_rel_mse"] = {k: float(f"{v:.4g}") for k, v in self.rel_mse.items()}
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage_names(stages: Iterable[Any] | None) -> list[str]:
    """Names of lossy stages from a config's ``stages`` (transform dicts, configs or names); pipelines flattened."""
    names: list[str] = []
    for stage in stages or []:
        if isinstance(stage, str):
            names.append(stage)
        elif isinstance(stage, Mapping):
            if stage.get("transform") == "pipeline" and stage.get("stages"):
                names += stage_names(stage["stages"])
            else:
                names.append(str(stage.get("transform") or stage.get("name") or "unknown"))
        elif getattr(stage, "name", "") == "pipeline" and getattr(stage, "stages", None):
            names += stage_names(stage.stages)
        else:
            names.append(str(getattr(stage, "name", "") or type(stage).__name__))
    return names


def card_tags(stats: CardStats) -> list[str]:
    """``["llmcomp", "lossless"]``, or ``["llmcomp", "lossy", <stage names>...]``."""
    if stats.lossless:
        return ["llmcomp", "lossless"]
    return ["llmcomp", "lossy", *dict.fromkeys(stats.stages)]


def stats_from_encoded(
    encoded: Iterable[Any],
    plain_bytes: int = 0,
    plain_tensors: int = 0,
    config: Any = None,
) -> CardStats:
    """Card figures from EncodedTensors (e.g. ``quantizer.encoded.values()``) plus the plain tensors' bytes.

    ``config`` (a LosslessConfig or its dict) gives the coder, format version and stages.
    """
    encs = list(encoded)
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    original = sum(e.original_nbytes for e in encs)
    stored = sum(e.nbytes for e in encs)
    return CardStats(
        original_bytes=original + plain_bytes,
        compressed_bytes=stored + plain_bytes,
        weights=sum(e.numel for e in encs),
        weights_stored_bytes=stored,
        tensors=len(encs) + plain_tensors,
        compressed_tensors=len(encs),
        coder=str(cfg.get("coder", encs[0].header.get("coder", "huffman") if encs else "huffman")),
        format_version=int(cfg.get("format_version", 1)),
        stages=stage_names(cfg.get("stages")),
        dtypes=sorted({e.dtype for e in encs}),
        calibration=cfg.get("calibration_info"),
    )


def render_card(
    stats: CardStats,
    base_model: str | None = None,
    repo_id: str | None = None,
    title: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    template: str | os.PathLike | None = None,
) -> str:
    """The card's text. ``metadata`` adds YAML keys (license, language, pipeline_tag...) from the base card."""
    from huggingface_hub import ModelCard, ModelCardData

    path = Path(template) if template else TEMPLATE_DIR / ("lossless.md" if stats.lossless else "lossy.md")
    if not path.is_file():
        raise LlmcompError(f"model card template {os.fspath(path)!r} not found; reinstall llmcomp-hf")
    extra = {k: v for k, v in (metadata or {}).items() if k in CARRIED_KEYS and v}
    if extra.pop("library_name", None) in LIBRARIES:
        extra["library_name"] = metadata["library_name"]
    data = ModelCardData(
        base_model=base_model or None,
        base_model_relation="quantized" if base_model else None,
        **{"library_name": "transformers", **extra},
        tags=card_tags(stats),
        **{CARD_KEY: stats.figures()},
    )
    name = repo_id or (base_model.split("/")[-1] if base_model else "model")
    kind = "lossless" if stats.lossless else "lossy"
    bpw = stats.bits_per_weight
    cal = stats.calibration or {}
    calibration = (f"calibrated on {cal.get('texts')} texts ({cal.get('tokens')} tokens), file {cal.get('file')} "
                   f"(SHA-256 {str(cal.get('sha256'))[:16]}...)") if cal else "none"
    card = ModelCard.from_template(
        data,
        template_path=os.fspath(path),
        title=title or f"{name.split('/')[-1]} (llmcomp, {kind})",
        base_model=base_model,
        repo_id=repo_id or "path/to/this/folder",
        coder=stats.coder,
        stages=" → ".join(stats.stages),
        calibration=calibration,
        weight_error=("n/a" if not stats.rel_mse else
                      f"mean {stats.rel_mse['mean']:.3g}, worst tensor {stats.rel_mse['max']:.3g}"),
        original_bytes=f"{stats.original_bytes:,}",
        compressed_bytes=f"{stats.compressed_bytes:,}",
        original_h=human_bytes(stats.original_bytes),
        compressed_h=human_bytes(stats.compressed_bytes),
        ratio=f"{stats.ratio:.4f}",
        bits_per_weight="n/a" if bpw is None else f"{bpw:.3f}",
        dtypes=", ".join(stats.dtypes) or "n/a",
        compressed_tensors=stats.compressed_tensors,
        tensors=stats.tensors,
        format_version=stats.format_version,
    )
    return str(card)


def write_card(
    save_dir: str | os.PathLike,
    stats: CardStats | Mapping[str, Any],
    base_model: str | None = None,
    repo_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    appendix: str = "",
) -> Path:
    """Write the llmcomp card into ``save_dir/README.md`` and return its path.

    No card there, or an llmcomp card: ours is written (an old llmcomp card's ``base_model`` and
    carried metadata fill what the arguments leave out). A card someone else wrote: our facts are
    merged into it and their text stays (``card_merge``); one whose YAML does not parse is left alone
    with a warning. ``stats`` is a CardStats or a mapping of its fields (``stored_bytes`` is accepted
    for ``compressed_bytes``, as in ``LlmcompHfQuantizer.compression_stats()``); ``appendix`` is
    Markdown added to our card's body.
    """
    if not isinstance(stats, CardStats):
        stats = _stats_from_mapping(stats)
    path = Path(save_dir) / CARD_NAME
    theirs = path.read_text(encoding="utf-8") if path.is_file() else None
    old = _parse_or_none(theirs, path)
    if theirs is not None and old is None:
        return path
    base_model = base_model or card_base_model(old)  # ours, or the one an earlier merge put in
    if old is not None and is_llmcomp_card(old):
        metadata = {**old.data.to_dict(), **{k: v for k, v in (metadata or {}).items() if v}}
    text = render_card(stats, base_model=base_model, repo_id=repo_id, metadata=metadata) + appendix
    if old is not None and not is_llmcomp_card(old):
        text = merge_card(theirs, text)
        logger.info("llmcomp: merged the llmcomp facts into the model card in %s; its text was kept", os.fspath(path))
    path.write_text(text, encoding="utf-8")
    return path


def _parse_or_none(text: str | None, path: Path) -> Any | None:
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as exc:
        logger.warning("llmcomp: the model card %s was left as it is and holds no llmcomp facts (%s); fix its "
                       "YAML front matter, then run `llmcomp card %s`", os.fspath(path), exc, os.fspath(path.parent))
        return None


def read_card(folder: str | os.PathLike) -> Any | None:
    """The ModelCard in ``folder/README.md``, or None if there is none or it does not parse."""
    from llmcomp_hf.paths import confine, read_bytes

    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return None
    path = confine(folder, CARD_NAME)  # a link leading out of the folder is refused: it is copied and uploaded
    try:
        return parse(read_bytes(path).decode("utf-8"))
    except ValueError:  # also UnicodeDecodeError
        return None


def is_llmcomp_card(card: Any) -> bool:
    """True for a card written by llmcomp-hf (its YAML holds the ``llmcomp`` figures and it is not
    someone else's card with our facts merged in)."""
    return card is not None and isinstance(card.data.get(CARD_KEY), Mapping) and not is_merged(card.text)


def card_base_model(card: Any) -> str | None:
    """The ``base_model`` that llmcomp-hf set in ``card`` (ours, or merged with ``base_model_relation: quantized``)."""
    if card is None or not isinstance(card.data.get(CARD_KEY), Mapping):
        return None
    if is_merged(card.text) and card.data.get("base_model_relation") != "quantized":
        return None
    value = card.data.get("base_model")
    return str(value) if isinstance(value, str) and value else None


def human_bytes(n: int) -> str:
    """``1234567`` -> ``"1.23 MB"`` (decimal units, as the Hub shows file sizes)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{n} B"


def _stats_from_mapping(values: Mapping[str, Any]) -> CardStats:
    data = dict(values)
    if "compressed_bytes" not in data and "stored_bytes" in data:
        data["compressed_bytes"] = data.pop("stored_bytes")
    if "compressed_tensors" not in data and "tensors" in data and "weights" not in data:
        data["compressed_tensors"] = data["tensors"]
    known = {f for f in CardStats.__dataclass_fields__}
    unknown = sorted(set(data) - known - {"stored_bytes", "ratio"})
    if unknown or "original_bytes" not in data or "compressed_bytes" not in data:
        raise LlmcompError(
            f"card stats need original_bytes and compressed_bytes (or stored_bytes); got keys {sorted(values)}"
            + (f", unknown {unknown}" if unknown else "")
        )
    data["stages"] = stage_names(data.get("stages"))
    return CardStats(**{k: v for k, v in data.items() if k in known})
