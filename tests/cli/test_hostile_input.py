"""Damaged or hostile index, config and shards: the library raises an LlmcompError naming the file,
the CLI exits 1 (damaged input) or 2 (usage) with one line, never a traceback or a foreign type."""

from __future__ import annotations

import json
import shutil

import pytest

from llmcomp_hf import _prefetch
from llmcomp_hf.errors import FormatError, LlmcompError
from llmcomp_hf.format.reader import checkpoint_files, load_checkpoint
from llmcomp_hf.stream.source import read_checkpoint, read_config
from tests.cli.helpers import run_cli, small_checkpoint

INDEX = "model.safetensors.index.json"
DEEP = b"[" * 200_000 + b"]" * 200_000

BAD_JSON = {
    "deep": DEEP,
    "deep-dict": b'{"weight_map": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001,
    "not-a-dict": b"[1, 2]",
    "values-not-strings": json.dumps({"weight_map": {"a.weight": 1}}).encode(),
    "keys-of-a-list": json.dumps({"weight_map": ["model-00001-of-00002.safetensors"]}).encode(),
    "not-utf8": b'{"weight_map": {"a.weight": "\xff\xfe.safetensors"}}',
    "empty": b"",
    "nul-in-name": json.dumps({"weight_map": {"a.weight": "x\u0000.safetensors"}}).encode(),
    "not-safetensors": json.dumps({"weight_map": {"a.weight": "pytorch_model.bin"}}).encode(),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    src = small_checkpoint(root / "src")
    from llmcomp_hf.cli import main

    assert main(["compress", str(src), str(root / "c"), "-q"]) == 0
    return src, root / "c"


def _copy(folder, tmp_path, name="x"):
    return shutil.copytree(folder, tmp_path / name)


def _library_readers(folder):
    return {
        "stream": lambda: read_checkpoint(folder),
        "format": lambda: checkpoint_files(folder),
        "load": lambda: load_checkpoint(folder),
        "prefetch": lambda: _prefetch.discover(checkpoint_files(folder)),
    }


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err and err.count("\n") <= 1, err


@pytest.mark.parametrize("kind", sorted(BAD_JSON))
def test_a_hostile_index(folders, tmp_path, capsys, kind):
    src, comp = folders
    folder = _copy(comp, tmp_path)
    (folder / INDEX).write_bytes(BAD_JSON[kind])
    for what, read in _library_readers(folder).items():
        with pytest.raises(FormatError, match=INDEX) as info:
            read()
        assert type(info.value).__module__.startswith("llmcomp_hf"), what
    for cmd in (["verify", folder], ["inspect", folder], ["decompress", folder, tmp_path / "out"]):
        rc, _, err = run_cli(capsys, *cmd, "-q")
        assert rc == 1 and INDEX in err, (cmd, err)
        _no_traceback(err)
    plain = _copy(src, tmp_path, "plain")
    (plain / INDEX).write_bytes(BAD_JSON[kind])
    rc, _, err = run_cli(capsys, "compress", plain, tmp_path / "c2", "-q")
    assert rc == 1 and INDEX in err, err
    _no_traceback(err)


CONFIGS = {"not-utf8": b"\xff\xfe{}", "deep": DEEP, "garbage": b"{model_type: llama", "not-an-object": b"[]",
           "empty": b""}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_a_hostile_config(folders, tmp_path, capsys, kind):
    src, comp = folders
    folder = _copy(comp, tmp_path)
    (folder / "config.json").write_bytes(CONFIGS[kind])
    with pytest.raises(FormatError, match="config.json"):
        read_config(folder)
    for cmd in (["verify", folder], ["inspect", folder, "--no-bound"], ["decompress", folder, tmp_path / "out"]):
        rc, _, err = run_cli(capsys, *cmd, "-q")
        assert rc == 1 and "config.json" in err, (cmd, err)
        _no_traceback(err)
    plain = _copy(src, tmp_path, "plain")
    (plain / "config.json").write_bytes(CONFIGS[kind])
    rc, _, err = run_cli(capsys, "compress", plain, tmp_path / "c2", "-q")
    assert rc == 1 and "config.json" in err, err
    _no_traceback(err)


def test_a_quantization_config_that_is_not_an_object(folders, tmp_path, capsys):
    _, comp = folders
    folder = _copy(comp, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = 5
    (folder / "config.json").write_text(json.dumps(cfg))
    rc, _, err = run_cli(capsys, "verify", folder, "-q")
    assert rc == 1 and "quantization_config" in err, err


@pytest.mark.parametrize("cut", [4, 60, -10])
def test_a_truncated_shard(folders, tmp_path, capsys, cut):
    src, comp = folders
    folder = _copy(comp, tmp_path)
    shard = folder / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:cut])
    for what, read in _library_readers(folder).items():
        if what == "format":  # lists the files, does not read them
            continue
        with pytest.raises(LlmcompError, match=shard.name):
            read()
    for cmd in (["verify", folder], ["inspect", folder], ["decompress", folder, tmp_path / "out"]):
        rc, _, err = run_cli(capsys, *cmd, "-q")
        assert rc == 1 and shard.name in err, (cmd, err)
        _no_traceback(err)
    plain = _copy(src, tmp_path, "plain")
    (plain / shard.name).write_bytes((plain / shard.name).read_bytes()[:cut])
    rc, _, err = run_cli(capsys, "compress", plain, tmp_path / "c2", "-q")
    assert rc == 1 and shard.name in err, err
    _no_traceback(err)


def test_a_shard_header_that_is_not_utf8_or_nested_too_deeply(folders, tmp_path, capsys):
    _, comp = folders
    for i, header in enumerate((b'{"a":\xff}', DEEP)):
        folder = _copy(comp, tmp_path, f"x{i}")
        shard = folder / "model-00002-of-00002.safetensors"
        shard.write_bytes(len(header).to_bytes(8, "little") + header)
        for what, read in _library_readers(folder).items():
            if what == "format":  # lists the files, does not read them
                continue
            with pytest.raises(LlmcompError, match=shard.name):
                read()
        rc, _, err = run_cli(capsys, "verify", folder, "-q")
        assert rc == 1 and shard.name in err, err
        _no_traceback(err)


def test_an_unexpected_error_is_one_line_not_a_traceback(folders, capsys, monkeypatch):
    _, comp = folders
    import llmcomp_hf.stream.check as check

    def boom(*args, **kwargs):
        raise KeyError("weird")

    monkeypatch.setattr(check, "verify_checkpoint", boom)
    rc, _, err = run_cli(capsys, "verify", comp, "-q")
    assert rc == 3 and "KeyError" in err and "report" in err
    _no_traceback(err)
