"""Cards on ``save_pretrained`` and ``push_to_hub`` of models loaded with llmcomp-hf.

transformers 5.x gives a quantizer no hook into the save directory, and its ``push_to_hub``
replaces ``README.md`` with the repo's current card (or a bare one). So the quantizer moves a loaded
model to a same-named subclass of its class whose ``save_pretrained`` writes the llmcomp card next
to the shards and whose ``push_to_hub`` goes through :func:`llmcomp_hf.hub.push_model`, which
uploads that card. ``model.dequantize()`` restores the original class.
"""

from __future__ import annotations

import copyreg
import functools
import inspect
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_MARK = "_llmcomp_wrapped"
# What transformers' save_pretrained(push_to_hub=True) takes from **kwargs for the upload.
_SAVE_PUSH_KEYS = ("repo_id", "commit_message", "create_pr", "private", "token", "revision")


_SUBCLASSES: dict[type, type] = {}


def install(model: Any) -> None:
    """Give ``model`` the card-writing ``save_pretrained`` and ``push_to_hub`` (idempotent)."""
    cls = type(model)
    if getattr(cls, _MARK, False):
        return
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = _with_card_hooks(cls)
    model.__class__ = _SUBCLASSES[cls]


def uninstall(model: Any) -> None:
    """Restore the model's own class (``model.dequantize()``: an ordinary model again)."""
    cls = type(model)
    if cls.__dict__.get(_MARK, False):
        model.__class__ = cls.__mro__[1]


def _with_card_hooks(cls: type) -> type:
    """A subclass of ``cls`` with the same name, module and pickling, whose two methods add the card.

    A subclass rather than methods stored on the instance: an instance attribute holding a bound
    method would make a reference cycle, so a deleted model (and its weights) would stay in memory
    until the cycle collector ran. The name is kept because ``config.architectures`` is taken
    from it; pickles and copies name the original class.
    """
    signature = inspect.signature(cls.save_pretrained)

    def save_pretrained(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(self, *args, **kwargs)
        options = dict(bound.arguments)
        options.pop(next(iter(signature.parameters)))  # self
        extra = options.pop("kwargs", {})
        push = bool(options.pop("push_to_hub", False))
        hub_options = {key: extra.pop(key) for key in _SAVE_PUSH_KEYS if key in extra}
        if "token" in options:
            hub_options.setdefault("token", options["token"])
        result = cls.save_pretrained(self, **options, **extra)
        folder = Path(os.fspath(options["save_directory"]))
        if options.get("is_main_process", True) and _is_llmcomp(self):
            write_save_card(self, folder, options.get("variant"))
            if push:
                from llmcomp_hf.hub import push_folder

                repo_id = hub_options.pop("repo_id", None) or folder.name
                push_folder(folder, repo_id, card=False, **hub_options)
        return result

    def push_to_hub(self: Any, repo_id: str, **kwargs: Any) -> Any:
        from llmcomp_hf.hub import push_model

        if not _is_llmcomp(self):  # e.g. a model made with type(model).from_pretrained(dense)
            return cls.push_to_hub(self, repo_id, **kwargs)
        return push_model(self, repo_id, **kwargs)

    def __reduce_ex__(self: Any, protocol: Any) -> Any:  # noqa: N807 (pickle protocol)
        reduced = cls.__reduce_ex__(self, protocol)
        if isinstance(reduced, tuple) and len(reduced) > 1 and reduced[0] is copyreg.__newobj__ \
                and reduced[1] and reduced[1][0] is type(self):
            reduced = (_new_instance, (cls, *reduced[1][1:]), *reduced[2:])
        return reduced

    functools.update_wrapper(save_pretrained, cls.save_pretrained)
    functools.update_wrapper(push_to_hub, cls.push_to_hub)
    namespace = {
        "save_pretrained": save_pretrained,
        "push_to_hub": push_to_hub,
        "__reduce_ex__": __reduce_ex__,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        _MARK: True,
    }
    return type(cls.__name__, (cls,), namespace)


def _is_llmcomp(model: Any) -> bool:
    from llmcomp_hf.config import QUANT_METHOD

    config = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    return getattr(config, "quant_method", None) == QUANT_METHOD


def _new_instance(cls: type, *args: Any) -> Any:
    """Unpickling target: a bare instance of the model's own class (state is applied after)."""
    return cls.__new__(cls, *args)


def write_save_card(model: Any, folder: Path, variant: str | None = None) -> Path | None:
    """Write the llmcomp card into ``folder`` after a save; a card written by someone else gets our facts merged in.

    Figures come from the saved shards' headers; ``base_model`` and the carried metadata (license,
    language, datasets, pipeline_tag, library_name) from where the model was loaded.
    """
    from llmcomp_hf.hub import model_origin
    from llmcomp_hf.stream.check import stats_from_checkpoint, write_checkpoint_card

    source, base_model = model_origin(model)
    return write_checkpoint_card(folder, stats_from_checkpoint(folder, variant), base_model, src=source)
