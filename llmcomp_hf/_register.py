"""Registration of the llmcomp quantizer with transformers, without importing transformers eagerly.

``install()`` (called by ``import llmcomp_hf``) registers at once when ``transformers.quantizers.auto``
is already imported, and otherwise adds a post-import hook to ``sys.meta_path`` that registers right
after transformers imports that module (or, when ``llmcomp_hf.quantizer`` is what imported it, right
after our quantizer module finishes). So ``import llmcomp_hf`` stays cheap, and any later
``from_pretrained`` of an llmcomp checkpoint finds the quantizer. Nothing in transformers is patched:
the hook only wraps the loaders of those two modules to call the public ``register_*`` functions.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
import warnings
from types import ModuleType

from llmcomp_hf._hf_compat import check_transformers_version
from llmcomp_hf.errors import LlmcompError

_TARGET = "transformers.quantizers.auto"
_OURS = "llmcomp_hf.quantizer"
_LOCK = threading.RLock()


def register() -> None:
    """Register ``CompressionConfig`` and the quantizer under ``quant_method="llmcomp"`` (idempotent).

    ``CompressionConfig.from_dict`` gives a ``LosslessConfig`` for empty ``stages``.

    An unsupported transformers version only warns here; the quantizer then refuses to load or
    compress with a clear error, rather than breaking ``import transformers``.
    """
    from transformers.quantizers import auto

    from llmcomp_hf.config import QUANT_METHOD, CompressionConfig
    from llmcomp_hf.quantizer import LlmcompHfQuantizer

    with _LOCK:
        try:
            check_transformers_version()
        except LlmcompError as exc:
            warnings.warn(str(exc), stacklevel=2)
        for mapping, cls, register_fn in (
            (auto.AUTO_QUANTIZATION_CONFIG_MAPPING, CompressionConfig, auto.register_quantization_config),
            (auto.AUTO_QUANTIZER_MAPPING, LlmcompHfQuantizer, auto.register_quantizer),
        ):
            existing = mapping.get(QUANT_METHOD)
            if existing is None:
                register_fn(QUANT_METHOD)(cls)
            elif _qualname(existing) != _qualname(cls):
                raise LlmcompError(
                    f"quant_method {QUANT_METHOD!r} is already registered to {_qualname(existing)}; another "
                    "package claims the same name: uninstall it or load it in another process"
                )


def install() -> None:
    """Register now if transformers' quantizer registry is loaded, else once it and our quantizer are.

    The hook watches both modules: importing ``llmcomp_hf.quantizer`` first imports transformers'
    registry while our class is still undefined, so registration then waits for our module to finish.
    """
    with _LOCK:
        if _TARGET in sys.modules and not _initializing(sys.modules[_TARGET]):
            register()
        elif not any(isinstance(f, _PostImportHook) for f in sys.meta_path):
            sys.meta_path.insert(0, _PostImportHook())


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _initializing(module: ModuleType | None) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _ready(just_executed: str) -> bool:
    """Whether registering can run now that ``just_executed`` (one of the watched modules) has executed."""
    if just_executed == _TARGET:  # our quantizer is imported by register() unless it is half-imported now
        return not _initializing(sys.modules.get(_OURS))
    return _TARGET in sys.modules and not _initializing(sys.modules[_TARGET])


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Finds the two watched modules with the other finders and registers once both have executed."""

    def find_spec(self, fullname: str, path, target=None):  # noqa: ANN001 (importlib signature)
        if fullname not in (_TARGET, _OURS):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RegisteringLoader(spec.loader, self)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, hook: _PostImportHook) -> None:
        self._inner, self._hook = inner, hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        if not _ready(module.__name__):
            return  # the other watched module registers once it has executed
        try:
            register()
        except (ImportError, LlmcompError) as exc:  # never break `import transformers` itself
            warnings.warn(f"llmcomp-hf could not register with transformers: {exc}", stacklevel=2)
            return
        with _LOCK:
            if self._hook in sys.meta_path:
                sys.meta_path.remove(self._hook)
