"""Output folders: atomic staging next to the destination, and copying the non-weight files."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmcomp_hf.paths import walk_files
from llmcomp_hf.stream.source import CheckpointError

# Weight files in other formats: never copied (they would ship the uncompressed weights again).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".onnx_data", ".gguf")
WEIGHT_INDEXES = (".safetensors.index.json", ".bin.index.json")
CARD_NAME = "README.md"


@contextmanager
def staged_output(dst: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder next to ``dst``; on success it replaces ``dst`` by renames.

    On any exception (or Ctrl-C) the temp folder is removed and ``dst`` is untouched, so ``dst`` is
    either absent, its previous content, or the complete new checkpoint. A killed process can leave
    a ``.<name>.partial-*`` folder beside ``dst``, never a half-written ``dst``.
    """
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{os.fspath(dst)!r} already exists; choose another destination or pass --overwrite")
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{os.fspath(dst)!r} is a file, not a folder; choose another destination")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        os.chmod(tmp, 0o755)
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
