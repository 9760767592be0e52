"""Cards on ``save_pretrained`` and ``push_to_hub`` of models loaded with llmcomp-hf.

transformers 5.x gives a quantizer no hook into the save directory, and its ``push_to_hub``
replaces ``README.md`` with the repo's current card (or a bare one). So the quantizer wraps the two
methods on the model instance (not its class: ``config.architectures`` is taken from the class
name): ``save_pretrained`` writes the llmcomp card next to the shards, and ``push_to_hub`` goes
through :func:`llmcomp_hf.hub.push_model`, which uploads that card. ``model.dequantize()`` removes
the wrappers again.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import weakref
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_MARK = "_llmcomp_wrapped"
# What transformers' save_pretrained(push_to_hub=True) takes from **kwargs for the upload.
_SAVE_PUSH_KEYS = ("repo_id", "commit_message", "create_pr", "private", "token", "revision")


class _InstanceHook:
    """A method set on one model instance that holds the model weakly.

    A bound method stored on the instance would form a model -> method -> model cycle, so a
    discarded model would wait for the cyclic garbage collector instead of being freed at once.
    """

    def __init__(self, model: Any, fn: Any, wraps: Any) -> None:
        functools.update_wrapper(self, wraps)
        self._model = weakref.ref(model)
        self._fn = fn
        setattr(self, _MARK, True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        model = self._model()
        if model is None:
            raise ReferenceError("the model this method belonged to no longer exists")
        return self._fn(model, *args, **kwargs)


def install(model: Any) -> None:
    """Wrap ``model.save_pretrained`` and ``model.push_to_hub`` (idempotent)."""
    if getattr(model.save_pretrained, _MARK, False):
        return
    cls = type(model)
    signature = inspect.signature(cls.save_pretrained)
    signature = signature.replace(parameters=list(signature.parameters.values())[1:])  # without self

    def save_pretrained(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs)
        options = dict(bound.arguments)
        extra = options.pop("kwargs", {})
        push = bool(options.pop("push_to_hub", False))
        hub_options = {key: extra.pop(key) for key in _SAVE_PUSH_KEYS if key in extra}
        if "token" in options:
            hub_options.setdefault("token", options["token"])
        result = cls.save_pretrained(self, **options, **extra)
        folder = Path(os.fspath(options["save_directory"]))
        if options.get("is_main_process", True):
            write_save_card(self, folder)
            if push:
                from llmcomp_hf.hub import push_folder

                repo_id = hub_options.pop("repo_id", None) or folder.name
                push_folder(folder, repo_id, card=False, **hub_options)
        return result

    def push_to_hub(self: Any, repo_id: str, **kwargs: Any) -> Any:
        from llmcomp_hf.hub import push_model

        return push_model(self, repo_id, **kwargs)

    model.__dict__["save_pretrained"] = _InstanceHook(model, save_pretrained, cls.save_pretrained)
    model.__dict__["push_to_hub"] = _InstanceHook(model, push_to_hub, cls.push_to_hub)


def uninstall(model: Any) -> None:
    """Drop the wrappers (``model.dequantize()``: the model is an ordinary one again)."""
    for name in ("save_pretrained", "push_to_hub"):
        fn = model.__dict__.get(name)
        if fn is not None and getattr(fn, _MARK, False):
            del model.__dict__[name]


def write_save_card(model: Any, folder: Path) -> Path | None:
    """Write the llmcomp card into ``folder`` after a save; a card written by someone else stays.

    Figures come from the saved shards' headers; ``base_model`` and the carried metadata (license,
    language, ...) from where the model was loaded.
    """
    from llmcomp_hf.card import is_llmcomp_card, read_card
    from llmcomp_hf.stream.check import stats_from_checkpoint, write_checkpoint_card

    existing = read_card(folder)
    if existing is not None and not is_llmcomp_card(existing):
        logger.warning("llmcomp: %s holds a model card written by someone else; it was left as it is",
                       os.fspath(folder / "README.md"))
        return None
    source, base_model = model_origin(model)
    if base_model is None and existing is not None:
        base_model = existing.data.to_dict().get("base_model")
    return write_checkpoint_card(folder, stats_from_checkpoint(folder), base_model, src=source)


def model_origin(model: Any) -> tuple[Path | None, str | None]:
    """(local folder the model came from, the base model's repo id) from ``name_or_path``.

    The repo id is the folder's Hub-cache repo, the ``base_model`` of an llmcomp card in the folder
    (a compressed checkpoint loaded back), or ``name_or_path`` itself when it is a repo id.
    """
    from llmcomp_hf.card import is_llmcomp_card, read_card
    from llmcomp_hf.hub import looks_like_repo_id, repo_id_of_cache_path

    name = str(getattr(model, "name_or_path", "") or "")
    local = Path(name) if name and Path(name).is_dir() else None
    if local is None:
        return None, name if name and looks_like_repo_id(name) else None
    card = read_card(local)
    if is_llmcomp_card(card) and card.data.to_dict().get("base_model"):
        return local, str(card.data.to_dict()["base_model"])
    return local, repo_id_of_cache_path(local)
