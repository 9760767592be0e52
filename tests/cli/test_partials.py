"""Staged outputs: stale ``.partial-*`` folders of killed runs are cleaned, unwritable places are named."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from llmcomp_hf.stream.files import partial_prefix, staged_output
from llmcomp_hf.stream.source import CheckpointError
from tests.cli.helpers import run_cli, small_checkpoint


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_partial_folder_names_its_owner(tmp_path):
    with staged_output(tmp_path / "out") as tmp:
        assert tmp.name.startswith(partial_prefix(tmp_path / "out"))
        assert f"-{os.getpid()}-" in tmp.name and socket.gethostname().split(".")[0][:8] in tmp.name
    assert (tmp_path / "out").is_dir() and not list(tmp_path.glob(".out.partial-*"))


def test_stale_partials_of_this_destination_are_removed_and_nothing_else(tmp_path):
    dst = tmp_path / "out"
    prefix = partial_prefix(dst)
    dead = tmp_path / f"{prefix}{_dead_pid()}-abcd1234"
    alive = tmp_path / f"{prefix}{os.getppid()}-efgh5678"  # our parent runs: its partial is kept
    old_style = tmp_path / ".out.partial-k3j4h5g6"  # before owners were named: removed once a day old
    fresh_old_style = tmp_path / ".out.partial-zzzz9999"
    other_dst = tmp_path / f"{partial_prefix(tmp_path / 'other')}{_dead_pid()}-abcd1234"
    old_previous = tmp_path / ".out.old-abcd1234"  # may hold the only copy of a replaced output: kept
    other_host = tmp_path / f".out.partial-{'x' * 8}-{_dead_pid()}-abcd1234"
    for folder in (dead, alive, old_style, fresh_old_style, other_dst, old_previous, other_host):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
    day_ago = time.time() - 25 * 3600
    os.utime(old_style, (day_ago, day_ago))
    with staged_output(dst):
        pass
    left = {p.name for p in tmp_path.iterdir()}
    assert dead.name not in left and old_style.name not in left
    assert {alive.name, fresh_old_style.name, other_dst.name, old_previous.name, other_host.name, "out"} <= left


def test_cli_compress_cleans_a_killed_runs_partial(tmp_path, capsys):
    src = small_checkpoint(tmp_path / "src")
    stale = tmp_path / f"{partial_prefix(tmp_path / 'out')}{_dead_pid()}-abcd1234"
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"half")
    rc, _, err = run_cli(capsys, "compress", src, tmp_path / "out", "-q")
    assert rc == 0, err
    assert not stale.exists()


def test_an_unwritable_destination_says_permission_denied(tmp_path, capsys, monkeypatch):
    src = small_checkpoint(tmp_path / "src")

    def denied(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", os.path.join(dir, ".x"))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    rc, _, err = run_cli(capsys, "compress", src, tmp_path / "ro" / "out", "-q")
    assert rc == 2, err
    assert "permission denied" in err.lower() and str(tmp_path / "ro") in err
    assert "File exists" not in err and "Traceback" not in err


def test_a_destination_under_a_file_says_so(tmp_path, capsys):
    src = small_checkpoint(tmp_path / "src")
    (tmp_path / "afile").write_text("x")
    rc, _, err = run_cli(capsys, "compress", src, tmp_path / "afile" / "out", "-q")
    assert rc == 2, err
    assert "File exists" not in err and "not a folder" in err and "afile" in err


def test_staged_output_errors_are_checkpoint_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(CheckpointError, match="(?i)permission denied"):
        with staged_output(tmp_path / "out"):
            pass
