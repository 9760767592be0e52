"""The command line itself: help everywhere, cheap startup, exit codes for usage errors, the progress bar."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from llmcomp_hf.cli import EXIT_USAGE, Progress, build_parser
from tests.cli.helpers import run_cli

COMMANDS = ["compress", "decompress", "inspect", "verify", "push"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_everywhere(command, capsys):
    rc, out, _ = run_cli(capsys, *([command] if command else []), "--help")
    assert rc == 0 and "usage: llmcomp" in out
    if command is None:
        assert all(c in out for c in COMMANDS) and "Exit codes" in out


def test_help_does_not_import_torch_numba_or_transformers():
    code = ("import sys\nfrom llmcomp_hf.cli import main\ntry:\n    main(['compress', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(m for m in ('torch', 'numba', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["compress", "only-src"], ["inspect", "x", "--bogus"]])
def test_argument_errors_exit_2(args, capsys):
    rc, _, err = run_cli(capsys, *args)
    assert rc == EXIT_USAGE and "usage:" in err


def test_missing_folder_is_a_usage_error(tmp_path, capsys):
    for command in ("inspect", "verify"):
        rc, _, err = run_cli(capsys, command, tmp_path / "nope", "-q")
        assert rc == EXIT_USAGE and "nope" in err


def test_quiet_aliases():
    parser = build_parser()
    for flag in ("-q", "--quiet", "--no-progress"):
        assert parser.parse_args(["verify", "x", flag]).quiet


def test_progress_lines_when_not_a_tty():
    stream = io.StringIO()
    bar = Progress(stream=stream)
    for done in range(0, 101, 10):
        bar("compress", done * 10**7, 10**9)
    bar("verify", 10**9, 10**9)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("compress") and "100.0%" in lines[0] and "1.00/1.00 GB" in lines[0]
    assert lines[1].startswith("verify") and len(lines) == 2  # not a TTY: only phase ends (and every 10 s)
    quiet = io.StringIO()
    Progress(enabled=False, stream=quiet)("compress", 1, 1)
    assert quiet.getvalue() == ""


def test_progress_redraws_one_line_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    bar = Progress(stream=stream)
    bar("decompress", 0, 100)
    bar("decompress", 100, 100)
    text = stream.getvalue()
    assert text.count("\r") >= 1 and text.endswith("\n") and "[" + "#" * 24 + "]" in text
