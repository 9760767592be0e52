"""Helpers for the CLI/streaming tests: tiny sharded checkpoints, hub-cache layouts, tree digests."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from huggingface_hub.errors import EntryNotFoundError

from llmcomp_hf.cli import main
from llmcomp_hf.format import load_checkpoint
from tests.integration.helpers import assert_same_state, raw_bits, tiny_model  # noqa: F401  (re-exported)


def tiny_checkpoint(
    folder: Path, dtype: torch.dtype = torch.bfloat16, shard: str = "150KB", kind: str = "llama"
) -> Path:
    """A randomly initialised 2-layer model saved as a plain, sharded safetensors checkpoint."""
    tiny_model(kind, dtype).save_pretrained(folder, max_shard_size=shard)
    (folder / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# tiny base model\n")
    (folder / "tokenizer_config.json").write_text("{}\n")
    return folder


def tree_digest(folder: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mtime_ns)} of every file under ``folder``."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[path.relative_to(folder).as_posix()] = (digest, path.stat().st_mtime_ns)
    return out


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``llmcomp ARGS`` in-process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (plain or llmcomp) checkpoint, decoded."""
    return load_checkpoint(folder)


def hub_cache(cache: Path, repo_id: str, folder: Path, revision: str = "0" * 39 + "1") -> Path:
    """Lay ``folder`` out as the Hugging Face cache does: blobs, a snapshot of symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def small_checkpoint(folder: Path, outside: Path | None = None) -> Path:
    """A plain sharded checkpoint written with safetensors alone (fast, no model): two shards, an index and a
    config. Two weights are large enough to be compressed; ``norm.weight`` stays plain."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    shards = {
        "model-00001-of-00002.safetensors": {"a.weight": torch.randn(64, 64).to(torch.bfloat16)},
        "model-00002-of-00002.safetensors": {"b.weight": torch.randn(64, 64).to(torch.bfloat16),
                                             "norm.weight": torch.ones(64, dtype=torch.bfloat16)},
    }
    weight_map = {}
    for name, tensors in shards.items():
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (folder / "tokenizer_config.json").write_text("{}\n")
    return folder


def compressed_tiny(root: Path) -> Path:
    """``root/c``: a tiny sharded checkpoint compressed by ``llmcomp compress`` (base model org/tiny)."""
    src = tiny_checkpoint(root / "src")
    assert main(["compress", str(src), str(root / "c"), "-q", "--workers", "1", "--base-model", "org/tiny"]) == 0
    return root / "c"


class FakeHub:
    """Records create_repo/create_commit calls and the uploaded files' bytes; serves a remote README."""

    def __init__(self, monkeypatch, remote_card: str | None = None, tmp: Path | None = None) -> None:
        self.repos: list[dict] = []
        self.commits: list[dict[str, bytes]] = []
        fake = self

        def create_repo(api, repo_id, **kwargs):
            fake.repos.append({"repo_id": repo_id, **kwargs})
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_commit(api, repo_id, operations, **kwargs):
            files = {}
            for op in operations:
                src = op.path_or_fileobj
                files[op.path_in_repo] = Path(src).read_bytes() if isinstance(src, (str, Path)) else (
                    src.getvalue() if isinstance(src, io.BytesIO) else bytes(src))
            fake.commits.append(files)
            return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{'0' * 40}",
                              commit_message=kwargs.get("commit_message") or "", commit_description="", oid="0" * 40)

        def hf_hub_download(repo_id, filename, **kwargs):  # what ModelCard.load fetches
            if remote_card is None:
                raise EntryNotFoundError(f"{filename} not found in {repo_id}")
            path = tmp / "remote-README.md"
            path.write_text(remote_card)
            return str(path)

        # upload_folder streams through hf_xet when it is installed; its legacy path ends in create_commit
        monkeypatch.setattr("huggingface_hub.hf_api.is_xet_available", lambda: False)
        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        # the Hub's README YAML check (POST /api/validate-yaml): parse it locally instead
        monkeypatch.setattr(HfApi, "_validate_yaml", lambda api, content, **kwargs: ModelCard(content))
        monkeypatch.setattr("huggingface_hub.repocard.hf_hub_download", hf_hub_download)

    def card(self, commit: int = -1) -> ModelCard:
        return ModelCard(self.commits[commit]["README.md"].decode())
