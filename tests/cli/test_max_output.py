"""`--max-output`: a few stored bytes can declare gigabytes; the CLI refuses before allocating."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from llmcomp_hf.cli import main, output_size
from llmcomp_hf.codec.api import MAX_OUTPUT_BYTES
from llmcomp_hf.format import pack
from tests.cli.helpers import run_cli, tiny_checkpoint
from tests.codec.test_bombs import bomb


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    root = tmp_path_factory.mktemp("max-output")
    assert main(["compress", str(tiny_checkpoint(root / "src")), str(root / "c"), "-q", "--min-numel", "256"]) == 0
    return root / "c"


def _with_bomb(compressed, folder):
    """A copy whose first shard also holds a 32 GiB tensor stored in a few KB."""
    shutil.copytree(compressed, folder)
    shard = sorted(folder.glob("*.safetensors"))[0]
    with safe_open(str(shard), "pt") as handle:
        metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    parts = {k: v.clone() for k, v in pack("bomb.weight", bomb(32 << 30)).items()}
    tensors.update(parts)
    save_file(tensors, str(shard), metadata=metadata)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"].update({k: shard.name for k in parts})
        index.write_text(json.dumps(data))
    return folder


def test_the_cli_default_is_the_librarys():
    assert output_size("16G") == MAX_OUTPUT_BYTES == 16 << 30
    assert output_size("none") is None and output_size("1.5K") == 1536 and output_size("123") == 123


@pytest.mark.parametrize("command", ["verify", "decompress", "inspect"])
def test_a_small_limit_refuses_before_decoding(compressed, tmp_path, capsys, command):
    args = [command, str(compressed)] + ([str(tmp_path / "out")] if command == "decompress" else []) + ["-q", "--max-output", "1K"]
    rc, _, err = run_cli(capsys, *args)
    assert rc == 1 and "over the limit of 1,024" in err and "--max-output" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["verify", "decompress"])
def test_a_bomb_is_refused_by_default(compressed, tmp_path, capsys, command):
    folder = _with_bomb(compressed, tmp_path / "bomb")
    args = [command, str(folder)] + ([str(tmp_path / "out")] if command == "decompress" else []) + ["-q"]
    rc, _, err = run_cli(capsys, *args)
    assert rc == 1 and "bomb.weight" in err and "34,359,738,368" in err, err


def test_no_limit_on_request(compressed, capsys):
    rc, _, err = run_cli(capsys, "verify", str(compressed), "-q", "--max-output", "none")
    assert rc == 0, err


def test_a_bad_size_is_a_usage_error(compressed, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", str(compressed), "--max-output", "lots"])
    assert exit_info.value.code == 2
