"""Fixtures of the fuzz tests: the tiny compressed seed checkpoints, built once per session."""

from __future__ import annotations

import pytest

from .seeds import make_checkpoints


@pytest.fixture(scope="session")
def fuzz_checkpoints(tmp_path_factory):
    """{"lossless": folder, "lossy": folder} (tiny llama, `llmcomp compress`, the second with nf4)."""
    return make_checkpoints(tmp_path_factory.mktemp("fuzz-seeds"))
