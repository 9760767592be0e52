"""What a checkpoint's shards hold, from their tensor names alone: its compressed weights and their parts.

Every compressed weight must arrive whole (a lossless weight: its data, index and header parts) and must
be consumed by exactly one parameter when the model loads. ``inventory`` checks the first from the
names; the loader checks the second against ``Inventory.weights`` once loading is done.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.format.shard import PARTS, part_key, split_key, transform_base


@dataclass
class Inventory:
    weights: dict[str, str] = field(default_factory=dict)  # compressed weight (lossless or lossy) -> its shard
    lossy: set[str] = field(default_factory=set)  # the lossy ones among them
    part_files: dict[str, str] = field(default_factory=dict)  # every encoded part's key -> its shard
    bases: dict[str, str] = field(default_factory=dict)  # every name with encoded parts (lossy parts too) -> shard

    @property
    def lossless(self) -> dict[str, str]:
        return {name: file for name, file in self.weights.items() if name not in self.lossy}


def inventory(keys_by_file: Iterable[tuple[str, Iterable[str]]]) -> Inventory:
    """The compressed weights of a checkpoint given ``(shard file, its tensor names)`` pairs.

    Raises FormatError naming the weight and file when an encoded tensor lacks one of its parts (e.g. a
    renamed or dropped ``.llmcomp_header`` key): such a weight could only load as random values.
    """
    inv = Inventory()
    parts: dict[str, dict[str, str]] = {}
    for file, keys in keys_by_file:
        for key in keys:
            lossy_name = transform_base(key)
            if lossy_name is not None:
                inv.lossy.add(lossy_name)
                inv.weights.setdefault(lossy_name, file)
                inv.bases.setdefault(lossy_name, file)
                continue
            base, part = split_key(key)
            if part is not None:
                parts.setdefault(base, {})[part] = file
                inv.bases.setdefault(base, file)
    for base, found in parts.items():
        missing = [p for p in PARTS if p not in found]
        if missing:
            file = next(iter(found.values()))
            raise FormatError(
                f"encoded tensor {base!r} is missing {', '.join(repr(part_key(base, p)) for p in missing)} (it has "
                f"{', '.join(sorted(found))}){where(None, file)}: a key was renamed or dropped, so this weight "
                "cannot be decoded; restore the shard from its source or re-compress the model"
            )
        inv.part_files.update({part_key(base, p): f for p, f in found.items()})
        if _owner(base, inv.lossy) is None:
            inv.weights.setdefault(base, found["header"])
    return inv


def _owner(base: str, lossy: set[str]) -> str | None:
    """The lossy weight whose encoded part ``base`` is (``W.<part>`` for lossy weight ``W``), or None."""
    pos = base.rfind(".")
    while pos != -1:
        if base[:pos] in lossy:
            return base[:pos]
        pos = base.rfind(".", 0, pos)
    return None


__all__ = ["Inventory", "inventory"]
