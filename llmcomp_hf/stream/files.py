"""Output folders: atomic staging next to the destination, copying the non-weight files, and the plain
``config.json`` a decompressed checkpoint gets (``plain_config``)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmcomp_hf.paths import walk_files
from llmcomp_hf.stream.source import CheckpointError

# Weight files in other formats: never copied (they would ship the uncompressed weights again).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".onnx_data", ".gguf")
WEIGHT_INDEXES = (".safetensors.index.json", ".bin.index.json")
CARD_NAME = "README.md"


# A partial output folder is ``.<dst name>.partial-<host>-<pid>-<random>`` (see ``staged_output``).
STALE_AFTER_S = 24 * 3600  # a partial whose owner cannot be checked is stale after a day untouched


@contextmanager
def staged_output(dst: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder next to ``dst``; on success it replaces ``dst`` by renames.

    On any exception (or Ctrl-C) the temp folder is removed and ``dst`` is untouched, so ``dst`` is
    either absent, its previous content, or the complete new checkpoint. A killed process can leave
    a partial folder beside ``dst``, never a half-written ``dst``; the next run for the same ``dst``
    removes it (``clean_stale_partials``). A place that cannot be written is a CheckpointError
    saying what failed (permission denied on which folder, a file where a folder should be).
    """
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{os.fspath(dst)!r} already exists; choose another destination or pass --overwrite")
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{os.fspath(dst)!r} is a file, not a folder; choose another destination")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_partials(dst)
        tmp = Path(tempfile.mkdtemp(prefix=f"{partial_prefix(dst)}{os.getpid()}-", dir=dst.parent))
        os.chmod(tmp, 0o755)
    except OSError as exc:
        raise _unwritable(dst, exc) from exc
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.rename(dst, old / "previous")
    try:
        os.rename(tmp, dst)
    except OSError:
        if old is not None:
            os.rename(old / "previous", dst)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def partial_prefix(dst: Path) -> str:
    """Name prefix of this host's partial folders for ``dst``: ``.<name>.partial-<host>-`` (the pid follows)."""
    return f".{dst.name}.partial-{_host()}-"


def clean_stale_partials(dst: Path, now: float | None = None) -> list[str]:
    """Remove the partial folders that killed runs left beside ``dst``; returns their names.

    Only folders named like ours for this ``dst`` (``.<name>.partial-*``, not links) are considered:
    one of this host whose owning pid is no longer running is removed; any other (another host on a
    shared file system, or named before owners were recorded) only once untouched for
    ``STALE_AFTER_S``. A running owner's folder is never touched; ``.<name>.old-*`` folders (which can
    hold the only copy of a replaced output) are left alone.
    """
    now = time.time() if now is None else now
    ours, anyone = partial_prefix(dst), f".{dst.name}.partial-"
    removed = []
    for entry in os.scandir(dst.parent):
        if not entry.name.startswith(anyone) or not entry.is_dir(follow_symlinks=False):
            continue
        pid = _owner(entry.name[len(ours):]) if entry.name.startswith(ours) else None
        if pid is not None:
            stale = pid != os.getpid() and not _running(pid)
        else:
            stale = now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _owner(rest: str) -> int | None:
    head, sep, _ = rest.partition("-")
    return int(head) if sep and head.isdigit() else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return True  # cannot tell: keep its folder
    return True


def _host() -> str:
    name = "".join(c for c in socket.gethostname().split(".")[0] if c.isalnum())
    return name[:8] or "host"


def _unwritable(dst: Path, exc: OSError) -> CheckpointError:
    """What failed when the output could not be staged beside ``dst``, and the fix."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        blocker = next((p for p in (dst.parent, *dst.parent.parents) if p.exists()), dst.parent)
        if not blocker.is_dir():
            return CheckpointError(f"cannot create {os.fspath(dst)!r}: {os.fspath(blocker)!r} is a file, not a folder; "
                                   "choose another destination")
    place = Path(exc.filename) if exc.filename else dst.parent
    if place.parent == dst.parent and place.name.startswith("."):  # our temp folder: name the folder it goes in
        place = dst.parent
    if isinstance(exc, PermissionError):
        return CheckpointError(f"cannot create {os.fspath(dst)!r}: permission denied on {os.fspath(place)!r}; "
                               "choose a writable destination")
    return CheckpointError(f"cannot create {os.fspath(dst)!r}: {exc.strerror or exc} on {os.fspath(place)!r}; "
                           "choose another destination")


def check_paths(src: Path, dst: Path) -> None:
    """Refuse a destination equal to or inside the source (the source is never written)."""
    src, dst = src.resolve(), dst.resolve()
    if dst == src or src in dst.parents:
        raise CheckpointError(
            f"destination {os.fspath(dst)!r} is the source folder or inside it; choose a folder outside the source"
        )


def is_weight_file(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith(WEIGHT_INDEXES)


def side_files(src: Path, skip: set[str] | None = None) -> list[tuple[Path, str]]:
    """(path, relative POSIX path) of every file of ``src`` except weights, hidden files and ``skip``.

    Symlinks are followed only when they stay inside the source (or, for a Hugging Face cache
    snapshot, inside its repo's cache folder, where the blobs are). A link leading anywhere else, or
    a file that is not a regular file, is refused (``UnsafePathError`` naming it).
    """
    skip = skip or set()
    return [(path, rel) for path, rel in walk_files(src) if rel not in skip and not is_weight_file(rel)]


def copy_side_files(src: Path, dst: Path, skip: set[str] | None = None,
                    files: list[tuple[Path, str]] | None = None) -> list[str]:
    """Copy the ``side_files`` of ``src`` (or ``files``, listed earlier) into ``dst``: the content, never a
    link. Returns the copied relative paths."""
    chosen = side_files(src, skip) if files is None else files
    for path, rel in chosen:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return [rel for _, rel in chosen]


def plain_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` without ``quantization_config`` and without the load guard entry."""
    from llmcomp_hf._guard import GUARD_KEY

    cfg = {k: v for k, v in cfg.items() if k != "quantization_config"}
    fusion = cfg.get("fusion_config")
    if isinstance(fusion, dict) and GUARD_KEY in fusion:
        rest = {k: v for k, v in fusion.items() if k != GUARD_KEY}
        if rest:
            cfg["fusion_config"] = rest
        else:
            del cfg["fusion_config"]
    return cfg
