"""The Hugging Face Hub side: resolve a repo id to a local snapshot, push a compressed folder with its card.

Everything goes through ``huggingface_hub`` (``snapshot_download``, ``HfApi.create_repo``,
``HfApi.upload_folder``); nothing here talks HTTP itself.

Why ``push_model`` exists: transformers 5.x ``PreTrainedModel.push_to_hub`` (and
``save_pretrained(push_to_hub=True)``) saves into a folder and then *overwrites* ``README.md`` with
the repo's current card (or, for a new repo, a bare card that only lists tags), so the llmcomp
card written at save time never reaches the Hub. ``push_model`` saves, writes the card and
uploads with ``upload_folder``; ``push_folder`` does the same for a folder on disk (``llmcomp push``).
Models loaded with llmcomp-hf route ``push_to_hub`` to ``push_model`` (see ``_save_hooks``).
(``upload_folder`` makes one commit, or, with ``hf_xet`` installed, a resumable series of commits
for very large folders.)
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from llmcomp_hf.errors import LlmcompError

# Weights in other formats are not needed to compress a safetensors checkpoint.
IGNORE_ON_DOWNLOAD = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.gguf",
                      "onnx/*", "openvino/*", "*.ot"]
IGNORE_ON_UPLOAD = [".*", ".*/**", "**/.*", "*.partial-*", "__pycache__/**"]
_CACHE_DIR_RE = re.compile(r"(?:^|/)models--([^/]+)--([^/]+)/snapshots/[^/]+/?$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class HubError(LlmcompError):
    """A repo id could not be resolved, or the Hub refused an operation."""


def looks_like_repo_id(text: str) -> bool:
    """``"org/name"`` or ``"name"`` (and not an existing path)."""
    return bool(_REPO_ID_RE.match(text)) and not text.endswith((".", "/")) and ".." not in text


def resolve_source(
    src: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    offline: bool | None = None,
) -> tuple[Path, str | None]:
    """(local folder, hub repo id or None) for a local folder or a hub repo id.

    A repo id is looked up in the Hugging Face cache first (``local_files_only=True``); it is
    downloaded only when missing and the Hub is reachable (not ``offline``/``HF_HUB_OFFLINE=1``).
    """
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise HubError(f"{src!r} is a file; give the model folder (the one holding config.json)")
        return path, repo_id_of_cache_path(path)
    if not looks_like_repo_id(src):
        raise HubError(f"{src!r} is neither an existing folder nor a Hub repo id like 'org/name'")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if offline is None:
        offline = bool(constants.HF_HUB_OFFLINE)
    kwargs: dict[str, Any] = dict(revision=revision, cache_dir=cache_dir, token=token,
                                  ignore_patterns=IGNORE_ON_DOWNLOAD)
    try:
        return Path(snapshot_download(src, local_files_only=True, **kwargs)), src
    except (LocalEntryNotFoundError, FileNotFoundError) as exc:
        if offline:
            raise HubError(
                f"{src!r} is not in the Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE}) and the Hub is "
                "offline (HF_HUB_OFFLINE=1): download it first (`hf download {src}`) or give a local folder"
            ) from exc
    try:
        return Path(snapshot_download(src, **kwargs)), src
    except Exception as exc:  # huggingface_hub raises many types (HTTP, auth, repo not found)
        raise HubError(f"cannot download {src!r} from the Hub: {exc}") from exc


def local_checkpoint(name: str | None, revision: str | None) -> str | None:
    """The folder holding checkpoint ``name``: a local folder as is, a Hub repo id's cached snapshot at
    ``revision`` (``local_files_only``: never the network), else None."""
    if not name:
        return None
    if os.path.isdir(name):
        return name
    if not looks_like_repo_id(name):
        return None
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, revision=revision, local_files_only=True)
    except Exception:  # not cached (or no huggingface_hub)
        return None


def repo_id_of_cache_path(path: Path) -> str | None:
    """``"org/name"`` for a folder ``.../models--org--name/snapshots/<rev>``, else None."""
    match = _CACHE_DIR_RE.search(path.resolve().as_posix())
    return f"{match.group(1)}/{match.group(2)}" if match else None


def ensure_card(folder: Path, repo_id: str | None = None) -> Path:
    """Make ``folder/README.md`` an up-to-date llmcomp card (figures from the shard headers).

    A card written by llmcomp-hf (or none) is (re)rendered with ``repo_id`` in its usage snippet,
    keeping its base_model and carried metadata; a card written by someone else keeps its text and
    gets our facts merged in (``stream.restore_card``).
    """
    from llmcomp_hf.stream import restore_card

    return restore_card(folder, repo_id=repo_id)


def cached_snapshot(repo_id: str) -> Path | None:
    """The folder of ``repo_id``'s main revision in the Hugging Face cache (no download), or None."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "config.json")
    return Path(path).parent if isinstance(path, str) else None


def folder_repo_id(folder: Path) -> str | None:
    """The Hub repo a local model folder came from: its Hub-cache repo, else config.json ``_name_or_path``.

    ``_name_or_path`` counts only as ``org/name`` that is not an existing path (transformers 4.x wrote
    it on save; 5.x does not). A plain local path gives None: no base model is made up.
    """
    from llmcomp_hf.paths import read_json

    repo_id = repo_id_of_cache_path(folder)
    if repo_id is not None:
        return repo_id
    try:
        config = read_json(folder / "config.json", "config.json")
    except (OSError, LlmcompError):  # the readers of the config report it, naming the file
        return None
    name = config.get("_name_or_path") if isinstance(config, dict) else None
    if not isinstance(name, str) or name.count("/") != 1 or not looks_like_repo_id(name):
        return None
    if Path(name).expanduser().exists() or (folder / name).exists():
        return None
    return name


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    card: bool = True,
) -> Any:
    """Create ``repo_id`` if needed and upload the llmcomp checkpoint in ``folder`` with ``upload_folder``.

    Uploads shards, index, config, tokenizer files and the card (``card=True`` re-renders an
    llmcomp card for ``repo_id`` first). Hidden files and leftover ``*.partial-*`` folders stay home.
    Returns huggingface_hub's CommitInfo.
    """
    from huggingface_hub import HfApi

    from llmcomp_hf.paths import walk_files

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HubError(f"{os.fspath(folder)!r} has no config.json: give the folder written by `llmcomp compress`")
    for _ in walk_files(folder):  # refuses a link leading out of the folder (it would upload its target)
        pass
    if card:
        ensure_card(folder, repo_id)
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = getattr(url, "repo_id", None) or repo_id
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        revision=revision,
        commit_message=commit_message or "Upload llmcomp-compressed model",
        commit_description=commit_description,
        create_pr=create_pr,
        ignore_patterns=IGNORE_ON_UPLOAD,
    )


def remote_card(repo_id: str, token: str | bool | None = None) -> Any | None:
    """The card of ``repo_id`` on the Hub, or None when the repo or its README does not exist yet."""
    from huggingface_hub import ModelCard
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    try:
        return ModelCard.load(repo_id, token=token, ignore_metadata_errors=True)
    except (EntryNotFoundError, RepositoryNotFoundError):
        return None


def push_model(
    model: Any,
    repo_id: str,
    *,
    base_model: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    max_shard_size: str | int = "5GB",
    tags: list[str] | str | None = None,
    **save_kwargs: Any,
) -> Any:
    """``model.push_to_hub`` for llmcomp models, with the llmcomp card (models loaded with llmcomp-hf
    route ``push_to_hub`` here).

    Saves with ``save_pretrained`` into a temp folder, writes the card (figures from the saved shards,
    ``base_model`` defaulting to where the model came from) and uploads the folder in one commit. A
    card already on the Hub that llmcomp-hf did not write is kept (with ``tags`` added, as
    transformers does) and gets our facts merged in; an llmcomp card there is re-rendered with fresh figures.
    """
    from llmcomp_hf.card import CARD_NAME, read_card
    from llmcomp_hf.stream.check import stats_from_checkpoint, write_checkpoint_card

    local, origin = model_origin(model)
    base_model = base_model or origin
    extra_tags = [tags] if isinstance(tags, str) else list(tags or [])
    current = remote_card(repo_id, token=token)
    with tempfile.TemporaryDirectory(prefix="llmcomp-push-") as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder, max_shard_size=max_shard_size, **save_kwargs)
        if current is not None:  # the Hub's card: an llmcomp one is refreshed, another gets our facts merged in
            (folder / CARD_NAME).write_text(str(current), encoding="utf-8")
        write_checkpoint_card(folder, stats_from_checkpoint(folder), base_model, src=local, repo_id=repo_id)
        card = read_card(folder)
        card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *extra_tags]))
        card.save(folder / CARD_NAME)
        return push_folder(folder, repo_id, private=private, token=token, revision=revision,
                           commit_message=commit_message, commit_description=commit_description,
                           create_pr=create_pr, card=False)


def model_origin(model: Any) -> tuple[Path | None, str | None]:
    """(local folder the model came from, the base model's repo id) from ``name_or_path``.

    A local folder's repo id is the ``base_model`` of an llmcomp card in it (a compressed checkpoint
    loaded back), its Hub-cache repo, or its config.json ``_name_or_path`` when that is a repo id
    (see ``hub.folder_repo_id``); never the path itself. A repo id's folder is its snapshot in the
    Hugging Face cache, when there (so the base card's license etc. are carried); the repo id is the
    base model unless the repo is itself an llmcomp checkpoint.
    """
    from llmcomp_hf.card import card_base_model, read_card

    name = str(getattr(model, "name_or_path", "") or "")
    local = Path(name) if name and Path(name).is_dir() else None
    if local is None:
        if not (name and looks_like_repo_id(name)):
            return None, None
        snapshot = cached_snapshot(name)
        base = card_base_model(read_card(snapshot)) if snapshot is not None else None
        if base is None and getattr(getattr(model, "hf_quantizer", None), "pre_quantized", False):
            return snapshot, None  # an llmcomp repo whose card is not cached: its base model is unknown here
        return snapshot, base or name
    return local, card_base_model(read_card(local)) or folder_repo_id(local)
