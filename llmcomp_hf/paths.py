"""Files of a checkpoint folder, read safely: names confined to the folder, regular files only.

Every reader of ``model.safetensors.index.json`` or of a shard list (``stream/source.py``,
``format/reader.py``, the CLI through them, ``_prefetch``'s discovery) and every copy of a folder's
side files goes through here, so a hostile checkpoint cannot make llmcomp read, copy or upload a file
outside it, nor hang it on a FIFO named ``*.safetensors``.

The rules:

* a name from an index is a relative POSIX path without ``..`` segments (as transformers requires);
* a path may be a symbolic link only when its target resolves inside the **link root**: the folder
  itself, or, for a Hugging Face cache snapshot ``.../models--org--name/snapshots/<rev>``, the repo's
  cache folder ``models--org--name`` (snapshot files are links to ``../../blobs/<hash>``);
* only regular files are opened, and a file is opened with ``O_NONBLOCK`` and checked with ``fstat``
  before anything is read, so a FIFO or device is refused instead of blocking.

Errors are ``UnsafePathError`` (a ``FormatError``) naming the file and the fix. This module imports
only the standard library and ``llmcomp_hf.errors``.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from llmcomp_hf.errors import FormatError

MAX_ENTRIES = 1_000_000  # files and folders one walk of a model folder may visit
MAX_JSON_BYTES = 256 << 20  # an index of a 1T-parameter model is a few MB; config.json a few KB


class UnsafePathError(FormatError):
    """A name or link of a checkpoint leads outside its folder, or a file is not a regular file."""


def link_root(folder: str | os.PathLike) -> Path:
    """Where links inside ``folder`` may lead: the folder, or the cache repo folder of a Hub snapshot
    (``folder`` being the snapshot or a folder inside it)."""
    absolute = Path(os.path.abspath(folder))
    real = absolute.resolve()
    for path in (absolute, real):
        for snapshot in (path, *path.parents):  # a subfolder of a snapshot too (``subfolder=`` loads)
            if snapshot.parent.name == "snapshots" and snapshot.parent.parent.name.startswith("models--"):
                return snapshot.parent.parent.resolve()
    return real


def is_inside(path: str | os.PathLike, root: Path) -> bool:
    """Whether ``path``, every link resolved, is ``root`` or lies under it (``root`` already resolved)."""
    real = Path(os.path.realpath(path))
    return real == root or root in real.parents


def confine(folder: str | os.PathLike, name: Any, source: str | os.PathLike | None = None) -> Path:
    """``folder / name`` for a file name read from ``source`` (an index), refused unless it stays inside.

    ``name`` must be a non-empty relative POSIX path without ``..``; where the path exists, it must
    resolve inside ``link_root(folder)``. The path returned is not resolved (messages keep its name).
    """
    origin = f" in {os.fspath(source)!r}" if source is not None else ""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePathError(f"file name {name!r}{origin} is not a file name; restore the file")
    pure = PurePosixPath(name)
    if pure.is_absolute() or "\\" in name or ".." in pure.parts or os.path.isabs(name):
        raise UnsafePathError(
            f"file name {name!r}{origin} points outside the checkpoint folder (absolute or with '..'); "
            "names must be relative to the folder: restore the file or re-download the checkpoint"
        )
    path = Path(folder) / name
    check_link(path, link_root(folder))
    return path


def check_link(path: Path, root: Path) -> None:
    """Refuse ``path`` when it (or a folder on its way) is a link leading outside ``root``."""
    if os.path.lexists(path) and not is_inside(path, root):
        raise UnsafePathError(
            f"{os.fspath(path)!r} leads outside the checkpoint folder (a symbolic link to "
            f"{os.path.realpath(path)!r}); llmcomp reads and copies only files inside it: replace the link "
            "by a copy of the file or remove it"
        )


def check_regular(path: str | os.PathLike) -> None:
    """Refuse anything but a regular file (links followed); FileNotFoundError when it is missing."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise UnsafePathError(_not_regular(path, mode))


def open_regular(path: str | os.PathLike) -> int:
    """A read-only descriptor of the regular file ``path``, opened so that a FIFO or device cannot block."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafePathError(_not_regular(path, mode))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(path: str | os.PathLike, limit: int = MAX_JSON_BYTES) -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes (more is a FormatError)."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FormatError(f"{os.fspath(path)!r} is larger than {limit} bytes; it is not a checkpoint file: restore it")
    return data


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse the JSON file ``path``; FormatError naming it for non-UTF-8, invalid or absurdly nested JSON."""
    data = read_bytes(path)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise FormatError(f"{os.fspath(path)!r} is not a valid {what} ({reason}); restore or re-download it") from exc


def read_weight_map(index: str | os.PathLike) -> dict[str, str]:
    """``weight_map`` of a safetensors index file, checked to be ``{tensor name: file name}`` strings."""
    data = read_json(index, "safetensors index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise FormatError(
            f"{os.fspath(index)!r} is not a valid safetensors index (it needs a non-empty 'weight_map' object of "
            "tensor name -> file name strings); restore or re-download it"
        )
    if not isinstance(data.get("metadata"), dict):  # transformers adds its own keys to it when loading
        raise FormatError(f"{os.fspath(index)!r} is not a valid safetensors index (its 'metadata' must be a JSON "
                          "object, as save_pretrained writes it); restore or re-download it")
    return weight_map


def index_shards(folder: str | os.PathLike, index_name: str) -> list[Path]:
    """The shard files named by ``folder/index_name``, sorted, each a ``*.safetensors`` name confined to the
    folder and a regular file."""
    index = confine(folder, index_name)
    names = sorted(set(read_weight_map(index).values()))
    foreign = [name for name in names if not name.endswith(".safetensors")]
    if foreign:  # the quantizer refuses them too: verify must not pass what from_pretrained refuses
        raise FormatError(f"{os.fspath(index)!r} names shards that are not .safetensors files: {foreign[:3]}; "
                          "restore or re-download it")
    files = [confine(folder, name, index) for name in names]
    missing = [os.fspath(f) for f in files if not os.path.lexists(f) or not os.path.exists(f)]
    if missing:
        raise FormatError(f"shards named in {index_name} are missing: {missing[:3]}; re-download the checkpoint")
    for file in files:
        check_regular(file)
    return files


def single_shard(folder: str | os.PathLike, name: str) -> Path | None:
    """``folder/name`` when it exists (confined, a regular file), else None."""
    path = Path(folder) / name
    if not os.path.lexists(path):
        return None
    path = confine(folder, name)
    if not os.path.exists(path):
        return None
    check_regular(path)
    return path


def walk_files(folder: str | os.PathLike, hidden: bool = False) -> Iterator[tuple[Path, str]]:
    """(path, POSIX path relative to ``folder``) of every file under ``folder``, sorted, checked.

    Folder links are followed when they stay inside ``link_root(folder)`` (not into a folder being
    walked, so a link loop ends); a file or folder leading outside raises UnsafePathError naming the link,
    and so does anything that is not a regular file (FIFO, socket, device). Names starting with a
    dot are skipped unless ``hidden``.
    """
    folder = Path(folder)
    root = link_root(folder)
    count = [0]

    def walk(path: Path, rel: str, above: frozenset[str] = frozenset()) -> Iterator[tuple[Path, str]]:
        real = os.path.realpath(path)
        if real in above:  # a link back to a folder being walked: a loop
            return
        above = above | {real}
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.name.startswith(".") and not hidden:
                continue
            count[0] += 1
            if count[0] > MAX_ENTRIES:  # folder links that fan out: each level doubles the walk
                raise UnsafePathError(f"{os.fspath(folder)!r} holds more than {MAX_ENTRIES} entries (folder links "
                                      "leading into each other?); a model folder is far smaller: remove the links")
            child, child_rel = path / entry.name, f"{rel}{entry.name}"
            check_link(child, root)
            if not os.path.exists(child):
                raise UnsafePathError(f"{os.fspath(child)!r} is a broken symbolic link; remove it or restore its target")
            if child.is_dir():
                yield from walk(child, child_rel + "/", above)
                continue
            check_regular(child)
            yield child, child_rel

    yield from walk(folder, "")


def _not_regular(path: str | os.PathLike, mode: int) -> str:
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special")
    return (f"{os.fspath(path)!r} is not a regular file ({kind}); a checkpoint holds only regular files (or links "
            "to them): remove or replace it")


__all__ = [
    "UnsafePathError",
    "check_link",
    "check_regular",
    "confine",
    "index_shards",
    "is_inside",
    "link_root",
    "open_regular",
    "read_bytes",
    "read_json",
    "read_weight_map",
    "single_shard",
    "walk_files",
]
