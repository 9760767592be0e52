"""SRC given as a Hub repo id: resolved from a hub-cache layout built here, offline, never downloaded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from llmcomp_hf.hub import looks_like_repo_id, repo_id_of_cache_path
from tests.cli.helpers import (
    assert_same_state,
    hub_cache,
    run_cli,
    state,
    tiny_checkpoint,
    tree_digest,
)

REPO = "tiny-org/tiny-llama"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    src = tiny_checkpoint(root / "plain")
    snapshot = hub_cache(root / "home" / "hub", REPO, src)
    return root, src, snapshot


def test_console_script_compresses_a_cached_repo_offline(cache, tmp_path):
    root, src, snapshot = cache
    exe = Path(sys.executable).with_name("llmcomp")
    if not exe.exists():
        pytest.skip("console script not installed: pip install -e . --no-deps")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(root / "home"), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    before = tree_digest(root / "home")
    proc = subprocess.run([str(exe), "compress", REPO, str(tmp_path / "out"), "--no-progress", "--workers", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "compressed" in proc.stdout
    card = ModelCard((tmp_path / "out" / "README.md").read_text())
    assert card.data.base_model == REPO and card.data.base_model_relation == "quantized"
    assert_same_state(state(src), state(tmp_path / "out"))
    assert tree_digest(root / "home") == before  # the cache (blobs, symlinks) is only read


def test_cache_dir_flag_and_local_snapshot_folder(cache, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as constants

    root, src, snapshot = cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache_dir = root / "home" / "hub"
    rc, _, err = run_cli(capsys, "compress", REPO, tmp_path / "a", "--cache-dir", cache_dir, "-q")
    assert rc == 0, err
    # a snapshot folder given as a path: the repo id is recovered from the cache layout
    rc, _, err = run_cli(capsys, "compress", snapshot, tmp_path / "b", "-q")
    assert rc == 0, err
    assert ModelCard((tmp_path / "b" / "README.md").read_text()).data.base_model == REPO
    assert json.loads((tmp_path / "b" / "config.json").read_text())["quantization_config"]["quant_method"] == "llmcomp"
    shutil.rmtree(tmp_path / "a")
    rc, _, err = run_cli(capsys, "compress", "tiny-org/not-cached", tmp_path / "x", "--cache-dir", cache_dir)
    assert rc == 2 and "HF_HUB_OFFLINE" in err and not (tmp_path / "x").exists()


def test_repo_id_helpers(tmp_path):
    assert looks_like_repo_id("org/name") and looks_like_repo_id("gpt2") and looks_like_repo_id("a-b/c.d_e")
    assert not looks_like_repo_id("./x") and not looks_like_repo_id("a/b/c") and not looks_like_repo_id("/abs")
    snap = tmp_path / "models--org--name" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    assert repo_id_of_cache_path(snap) == "org/name"
    assert repo_id_of_cache_path(tmp_path) is None
