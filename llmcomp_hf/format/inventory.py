"""What a checkpoint's shards hold, from their tensor names alone: its compressed weights and their parts.

Every compressed weight must arrive whole (a lossless weight: its data, index and header parts) and must
be consumed by exactly one parameter when the model loads. ``inventory`` checks the first from the
names; the loader checks the second against ``Inventory.weights`` once loading is done.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from llmcomp_hf.errors import FormatError, where
from llmcomp_hf.format.shard import PARTS, PLAIN_PREFIX, part_key, split_key, transform_base


_KINDS = ("plain", "compressed", "lossy")  # how a weight is stored, in the order messages name them


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
    renamed or dropped ``.llmcomp_header`` key): such a weight could only load as random values; and
    when the key set breaks :func:`check_keys`.
    """
    listed = [(file, list(keys)) for file, keys in keys_by_file]
    check_keys(listed)
    inv = Inventory()
    parts: dict[str, dict[str, str]] = {}
    for file, keys in listed:
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


def check_keys(files: Iterable[tuple[str, Iterable[str]]]) -> None:
    """Reject a checkpoint key set that loaders cannot read one way: ``(file, its keys)`` for every shard
    (an empty file name when unknown).

    A key must be in one shard only, and a weight is stored one way: plain, compressed (its
    ``llmcomp_*`` parts) or lossy (its ``llmcomp_transform``), never two. FormatError naming the tensor
    and the files. Every reader of a whole checkpoint calls this (``load_checkpoint``, ``stream``'s
    ``read_checkpoint`` behind verify/inspect/compress/decompress, the prefetcher's discovery).
    """
    home: dict[str, str] = {}
    how: dict[str, tuple[str, str]] = {}  # weight -> (how it is stored, file)
    for file, keys in files:
        for key in keys:
            if key in home:
                raise FormatError(
                    f"tensor {key!r} is stored in two shards, {home[key]!r} and {file!r}; the checkpoint is "
                    "inconsistent (shards mixed from two saves?): re-download or re-save it"
                )
            home[key] = file
            lossy = transform_base(key)
            base, part = split_key(key)
            name, kind = (lossy, "lossy") if lossy is not None else (base, "plain" if part is None else "compressed")
            seen = how.setdefault(name, (kind, file))
            if seen[0] != kind:
                raise FormatError(
                    f"weight stored both {' and '.join(sorted({seen[0], kind}, key=_KINDS.index))}"
                    f"{where(name, file or seen[1] or None)}; the checkpoint is inconsistent: "
                    "re-save it with llmcomp-hf"
                )


def check_plain_listed(shards: Iterable[tuple[str, Iterable[str], dict[str, str] | None]]) -> None:
    """Every plain tensor with a ``llmcomp.plain.<key>`` checksum in a shard's metadata is in some shard.

    ``(file, its keys, its metadata)`` for every shard. A renamed or dropped plain key would otherwise
    load as a missing (randomly initialised) weight or vanish from a decompressed checkpoint.
    """
    listed = [(file, set(keys), metadata or {}) for file, keys, metadata in shards]
    present = set().union(*(keys for _, keys, _ in listed)) if listed else set()
    for file, _, metadata in listed:
        for entry in metadata:
            key = entry[len(PLAIN_PREFIX):] if entry.startswith(PLAIN_PREFIX) else None
            if key is not None and key not in present:
                raise FormatError(
                    f"the shard metadata holds a checksum for plain tensor {key!r}, which is in no shard"
                    f"{where(key, file)}: a key was renamed or dropped; restore the shard from its source or "
                    "re-save the model"
                )


def _owner(base: str, lossy: set[str]) -> str | None:
    """The lossy weight whose encoded part ``base`` is (``W.<part>`` for lossy weight ``W``), or None."""
    pos = base.rfind(".")
    while pos != -1:
        if base[:pos] in lossy:
            return base[:pos]
        pos = base.rfind(".", 0, pos)
    return None


__all__ = ["Inventory", "check_keys", "check_plain_listed", "inventory"]
