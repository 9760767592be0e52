"""Hostile paths in a checkpoint folder: index names leaving the folder, links leading out, FIFOs.

Every reader of an index or a shard list (stream/source.py, format/reader.py, the CLI, _prefetch's
discovery) confines names to the folder (links may lead into the Hugging Face cache repo of a
snapshot) and opens regular files only, so nothing hangs on a FIFO and nothing outside is read or copied.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from llmcomp_hf import _prefetch
from llmcomp_hf.errors import FormatError
from llmcomp_hf.format.reader import checkpoint_files, load_checkpoint, shard_keys
from llmcomp_hf.stream.files import copy_side_files
from llmcomp_hf.stream.reader import ShardReader
from llmcomp_hf.stream.source import read_checkpoint, read_shard
from tests.cli.helpers import hub_cache, run_cli, small_checkpoint

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return small_checkpoint(tmp_path_factory.mktemp("paths") / "plain")


@pytest.fixture
def ckpt(base, tmp_path):
    return shutil.copytree(base, tmp_path / "ckpt", symlinks=True)


def _retarget(folder: Path, name: str, target: str) -> None:
    """Point every index entry of shard ``name`` at ``target``."""
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"] = {k: target if v == name else v for k, v in index["weight_map"].items()}
    (folder / INDEX).write_text(json.dumps(index))


def _readers(folder: Path):
    """Every reader of a checkpoint's shard list, as callables."""
    return {
        "stream": lambda: read_checkpoint(folder),
        "format": lambda: checkpoint_files(folder),
        "load": lambda: load_checkpoint(folder),
        "prefetch": lambda: _prefetch.discover(checkpoint_files(folder)),
    }


@pytest.mark.parametrize("how", ["absolute", "dotdot", "dotdot-inside", "link-out", "index-link-out"])
def test_index_names_outside_the_folder_are_refused(ckpt, tmp_path, how):
    first = "model-00001-of-00002.safetensors"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    stolen = shutil.copy(ckpt / first, outside / "stolen.safetensors")  # a valid shard: reading it would succeed
    if how == "absolute":
        _retarget(ckpt, first, str(stolen))
    elif how == "dotdot":
        _retarget(ckpt, first, "../elsewhere/stolen.safetensors")
    elif how == "dotdot-inside":  # stays inside, but `..` is refused as transformers refuses it
        (ckpt / "sub").mkdir()
        _retarget(ckpt, first, f"sub/../{first}")
    elif how == "index-link-out":
        shutil.move(ckpt / INDEX, outside / "stolen.index.json")
        os.symlink(outside / "stolen.index.json", ckpt / INDEX)
    else:
        (ckpt / first).unlink()
        os.symlink(stolen, ckpt / first)
    for what, read in _readers(ckpt).items():
        with pytest.raises(FormatError, match="outside|\\.\\.") as info:
            read()
        assert "stolen" in str(info.value) or first in str(info.value) or INDEX in str(info.value), what


@pytest.mark.parametrize("how", ["absolute", "dotdot", "link-out"])
def test_cli_refuses_names_outside_the_folder(ckpt, tmp_path, capsys, how):
    first = "model-00001-of-00002.safetensors"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    stolen = shutil.copy(ckpt / first, outside / "stolen.safetensors")
    if how == "absolute":
        _retarget(ckpt, first, str(stolen))
    elif how == "dotdot":
        _retarget(ckpt, first, "../elsewhere/stolen.safetensors")
    else:
        (ckpt / first).unlink()
        os.symlink(stolen, ckpt / first)
    for cmd in (["inspect", ckpt, "--no-bound"], ["compress", ckpt, tmp_path / "out"], ["verify", ckpt]):
        rc, _, err = run_cli(capsys, *cmd, "-q")
        assert rc == 1, (cmd, err)
        assert "outside" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def _hangs(call, fifo: Path, timeout: float = 20.0) -> tuple[bool, BaseException | None]:
    """Run ``call`` in a thread; (whether it was still blocked after ``timeout``, what it raised)."""
    box: list[BaseException | None] = [None]

    def target():
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box[0] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    blocked = thread.is_alive()
    if blocked:  # unblock the reader stuck in open(): a writer end that closes at once
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(5)
    return blocked, box[0]


def test_a_fifo_named_like_a_shard_does_not_hang(ckpt):
    second = ckpt / "model-00002-of-00002.safetensors"
    info = read_shard(second, ckpt)
    second.unlink()
    os.mkfifo(second)
    calls = {**_readers(ckpt), "shard_keys": lambda: shard_keys(second), "reader": lambda: ShardReader(info),
             "mapped": lambda: _prefetch._MappedShard(str(second))}
    for what, call in calls.items():
        blocked, exc = _hangs(call, second)
        assert not blocked, f"{what} blocked on a FIFO"
        assert isinstance(exc, FormatError) and "regular file" in str(exc) and second.name in str(exc), (what, exc)


def test_a_fifo_as_the_single_shard_is_refused(tmp_path):
    folder = tmp_path / "single"
    folder.mkdir()
    os.mkfifo(folder / "model.safetensors")
    for what, call in _readers(folder).items():
        blocked, exc = _hangs(call, folder / "model.safetensors")
        assert not blocked and isinstance(exc, FormatError), (what, exc)


def test_compress_refuses_a_link_to_a_file_outside_the_source(ckpt, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("token=hf_xxx\n")
    os.symlink(secret, ckpt / "notes.txt")
    rc, _, err = run_cli(capsys, "compress", ckpt, tmp_path / "out", "-q")
    assert rc == 1, err
    assert "notes.txt" in err and "outside" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))
    with pytest.raises(FormatError, match="notes.txt"):
        copy_side_files(ckpt, tmp_path / "copy")


def test_compress_refuses_a_linked_folder_outside_the_source(ckpt, tmp_path, capsys):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "id_rsa").write_text("secret\n")
    os.symlink(tmp_path / "home", ckpt / "extra")
    rc, _, err = run_cli(capsys, "compress", ckpt, tmp_path / "out", "-q")
    assert rc == 1 and "extra" in err and "outside" in err, err


def test_links_inside_the_source_are_copied_as_files(ckpt, tmp_path, capsys):
    (ckpt / "sub").mkdir()
    (ckpt / "sub" / "vocab.txt").write_text("a\nb\n")
    os.symlink("sub/vocab.txt", ckpt / "vocab.txt")
    os.symlink("sub", ckpt / "linked")  # a folder link inside: walked once, no loop
    os.symlink(".", ckpt / "sub" / "loop")
    rc, _, err = run_cli(capsys, "compress", ckpt, tmp_path / "out", "-q")
    assert rc == 0, err
    out = tmp_path / "out"
    assert (out / "vocab.txt").read_text() == "a\nb\n" and not (out / "vocab.txt").is_symlink()
    assert (out / "linked" / "vocab.txt").read_text() == "a\nb\n"
    assert (out / "sub" / "vocab.txt").read_text() == "a\nb\n"  # the real folder too, not only its link
    assert not (out / "sub" / "loop").exists()


def test_a_special_file_among_the_side_files_is_refused(ckpt, tmp_path, capsys):
    os.mkfifo(ckpt / "pipe.txt")
    rc, _, err = run_cli(capsys, "compress", ckpt, tmp_path / "out", "-q")
    assert rc == 1 and "pipe.txt" in err and "regular file" in err, err


def test_hub_cache_snapshots_keep_working(base, tmp_path, capsys):
    snapshot = hub_cache(tmp_path / "hub", "org/small", base)
    assert (snapshot / INDEX).is_symlink()
    shards, sharded = read_checkpoint(snapshot)
    assert sharded and len(shards) == 2
    assert [Path(f).name for f in checkpoint_files(snapshot)] == [s.path.name for s in shards]
    assert set(load_checkpoint(snapshot)) == {"a.weight", "b.weight", "norm.weight"}
    rc, _, err = run_cli(capsys, "compress", snapshot, tmp_path / "out", "-q")
    assert rc == 0, err
    assert not (tmp_path / "out" / "tokenizer_config.json").is_symlink()
    rc, _, err = run_cli(capsys, "verify", tmp_path / "out", "-q")
    assert rc == 0, err
    # a snapshot link leading out of its repo's cache folder is refused like any other
    outside = tmp_path / "stolen.json"
    outside.write_text("{}")
    os.symlink(outside, snapshot / "special_tokens_map.json")
    rc, _, err = run_cli(capsys, "compress", snapshot, tmp_path / "out2", "-q")
    assert rc == 1 and "special_tokens_map.json" in err, err


def test_push_refuses_a_folder_with_a_link_leading_out(ckpt, tmp_path, monkeypatch):
    import huggingface_hub

    from llmcomp_hf.hub import push_folder

    def no_network(*args, **kwargs):
        raise AssertionError("push must stop before contacting the Hub")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_network)
    secret = tmp_path / "secret.txt"
    secret.write_text("token\n")
    os.symlink(secret, ckpt / "notes.txt")
    with pytest.raises(FormatError, match="notes.txt"):
        push_folder(ckpt, "me/x", card=False)


def test_a_model_card_linked_out_is_refused(ckpt, tmp_path, capsys):
    secret = tmp_path / "secret.md"
    secret.write_text("---\nlicense: mit\n---\nsecret\n")
    (ckpt / "README.md").unlink(missing_ok=True)
    os.symlink(secret, ckpt / "README.md")
    rc, _, err = run_cli(capsys, "compress", ckpt, tmp_path / "out", "-q")
    assert rc == 1 and "README.md" in err and "outside" in err, err
    (ckpt / "README.md").unlink()
    rc, _, err = run_cli(capsys, "compress", ckpt, tmp_path / "out", "-q")
    assert rc == 0, err
    (tmp_path / "out" / "README.md").unlink()
    os.symlink(secret, tmp_path / "out" / "README.md")  # decompress would copy a foreign card as is
    rc, _, err = run_cli(capsys, "decompress", tmp_path / "out", tmp_path / "plain", "-q")
    assert rc == 1 and "README.md" in err and "outside" in err, err
    assert not (tmp_path / "plain").exists()


def test_shard_keys_refuses_a_shard_linked_out_of_the_folder(tmp_path):
    """transformers refuses absolute and `..` names itself; a link leading out is caught by shard_keys,
    which the quantizer runs on every file before loading."""
    from llmcomp_hf.format.reader import shard_keys

    src = small_checkpoint(tmp_path / "src")
    from llmcomp_hf.cli import main

    assert main(["compress", str(src), str(tmp_path / "c"), "-q"]) == 0
    shard = tmp_path / "c" / "model-00002-of-00002.safetensors"
    shutil.move(shard, tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "elsewhere.safetensors", shard)
    with pytest.raises(FormatError, match="outside"):
        shard_keys(shard)
    snapshot = hub_cache(tmp_path / "hub", "org/sub", src)  # links into the repo's blobs stay fine
    assert shard_keys(snapshot / "model-00002-of-00002.safetensors")[0] == ["b.weight", "norm.weight"]


def test_folder_links_fanning_out_are_bounded(tmp_path, monkeypatch):
    from llmcomp_hf import paths

    folder = tmp_path / "fan"
    (folder / "d0").mkdir(parents=True)
    for i in range(1, 12):  # d_i holds two links to d_{i-1}: 2^11 paths to the one file in d0
        (folder / f"d{i}").mkdir()
        for name in ("x", "y"):
            os.symlink(f"../d{i - 1}", folder / f"d{i}" / name)
    (folder / "d0" / "f.txt").write_text("x")
    monkeypatch.setattr(paths, "MAX_ENTRIES", 1000)
    with pytest.raises(FormatError, match="more than 1000 entries"):
        list(paths.walk_files(folder))
