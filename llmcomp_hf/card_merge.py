"""Put llmcomp's facts into a model card someone else wrote, without touching their words.

A card in the save folder that llmcomp-hf did not write (a hand-written one, or the one
sentence-transformers' ``save()`` writes over ours) is kept: its text stays as written, and:

- YAML: ``llmcomp`` (the figures) is set; ``base_model`` and ``base_model_relation: quantized`` are
  set when we know the base model (else theirs stay); our tags (``llmcomp``, ``lossless`` or ``lossy``
  and the stages) are added after theirs; every other key of ours (``library_name``, ``license``...)
  only fills a gap.
- Text: our card's body, headings one level down, goes at the end between :data:`BEGIN` and
  :data:`END`. Merging again replaces that section, so it never appears twice.

Their values of keys we replaced are noted in an HTML comment inside our section, so
:func:`unmerge_card` can take all of it out again (``llmcomp decompress`` of a merged folder).
"""

from __future__ import annotations

import json
import re
from typing import Any

BEGIN = "<!-- llmcomp-hf: begin (this section is rewritten by llmcomp-hf) -->"
END = "<!-- llmcomp-hf: end -->"
OWNED_KEYS = ("llmcomp", "base_model", "base_model_relation")  # ours win; the rest only fills gaps
_KEPT = re.compile(r"<!-- llmcomp-hf: theirs (\{.*?\}) -->")  # their values of OWNED_KEYS that ours replaced
_SECTION = re.compile(r"\n?" + re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.S)


def parse(text: str) -> Any:
    """The ModelCard of ``text``; ValueError when its YAML block is not a mapping or not YAML."""
    import yaml
    from huggingface_hub import ModelCard

    if not text.lstrip().startswith("---"):  # no YAML block: an empty one (huggingface_hub would warn)
        text = "---\n{}\n---\n" + text
    try:
        return ModelCard(text, ignore_metadata_errors=True)
    except yaml.YAMLError as exc:
        raise ValueError(f"its YAML front matter does not parse: {exc}") from exc


def is_merged(text: str) -> bool:
    """True for a card that holds an llmcomp section in someone else's card."""
    return BEGIN in text


def merge_card(theirs: str, ours: str) -> str:
    """``theirs`` (any card text) with the YAML facts and body of ``ours`` (an llmcomp card) merged in."""
    card, mine = parse(theirs), parse(ours)
    data, new = card.data, mine.data.to_dict()
    merged = is_merged(theirs)
    earlier = data.get("llmcomp") if merged else None
    kept = _kept(card.text) if merged else {}
    for key, value in new.items():
        if key == "tags":
            data.tags = list(dict.fromkeys([*_our_tags_removed(data.tags, earlier), *value]))
        elif key in OWNED_KEYS or data.get(key) in (None, "", []):
            if key in OWNED_KEYS and not merged and data.get(key) not in (None, value):
                kept[key] = data.get(key)
            data[key] = value
    body = _SECTION.sub("", card.text)
    if body and not body.endswith("\n"):
        body += "\n"
    note = f"<!-- llmcomp-hf: theirs {json.dumps(kept)} -->\n" if kept else ""
    card.text = f"{body}\n{BEGIN}\n{note}\n{_demote(mine.text.strip())}\n\n{END}\n"
    return str(card)


def unmerge_card(text: str) -> str:
    """A merged card without our section and our YAML keys and tags (their card as it was, YAML re-rendered)."""
    card = parse(text)
    figures = card.data.pop("llmcomp")
    if card.data.get("base_model_relation") == "quantized":
        card.data.pop("base_model_relation")
        card.data.pop("base_model")
    for key, value in _kept(card.text).items():
        card.data[key] = value
    card.data.tags = _our_tags_removed(card.data.tags, figures) or None
    card.text = _SECTION.sub("", card.text)
    return str(card)


def _kept(text: str) -> dict[str, Any]:
    match = _KEPT.search(text)
    try:
        kept = json.loads(match.group(1)) if match else {}
    except ValueError:
        return {}
    return {k: v for k, v in kept.items() if k in OWNED_KEYS} if isinstance(kept, dict) else {}


def _our_tags_removed(tags: list[str] | str | None, figures: Any) -> list[str]:
    """``tags`` without the ones an earlier merge added (``figures``: its ``llmcomp`` mapping, None if none)."""
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    if not isinstance(figures, dict):
        return tags
    ours = {"llmcomp", "lossless", "lossy", *(figures.get("stages") or [])}
    return [t for t in tags if t not in ours]


def _demote(markdown: str) -> str:
    """Every ATX heading one level down (``#`` -> ``##``), code blocks left alone."""
    out, fenced = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        out.append("#" + line if not fenced and re.match(r"#{1,5} ", line) else line)
    return "\n".join(out)
