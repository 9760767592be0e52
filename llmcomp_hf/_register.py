"""Registration of the llmcomp quantizer with transformers, without importing transformers eagerly.

``install()`` (called by ``import llmcomp_hf``) registers at once when ``transformers.quantizers.auto``
is already imported, and otherwise adds a post-import hook to ``sys.meta_path`` that registers right
after transformers imports that module. So ``import llmcomp_hf`` stays cheap, and any later
``from_pretrained`` of an llmcomp checkpoint finds the quantizer. Nothing in transformers is patched:
the hook only wraps the loader of that one module to call the public ``register_*`` functions.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
import warnings
from types import ModuleType

from llmcomp_hf.errors import LlmcompError

SUPPORTED_TRANSFORMERS = ">=5.21,<6"  # 5.20 leaves per-expert (MoE) weights out of the model's merge converters
_TARGET = "transformers.quantizers.auto"
_LOCK = threading.RLock()


def check_transformers_version(version: str | None = None) -> None:
    """Raise LlmcompError unless ``version`` (default: the installed one) is in SUPPORTED_TRANSFORMERS."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if version is None:
        import transformers

        version = transformers.__version__
    try:
        parsed = Version(version)
    except InvalidVersion as exc:
        raise LlmcompError(f"cannot parse the transformers version {version!r}") from exc
    if not SpecifierSet(SUPPORTED_TRANSFORMERS).contains(parsed, prereleases=True):
        raise LlmcompError(
            f"llmcomp-hf supports transformers {SUPPORTED_TRANSFORMERS}, found {version}: install a supported "
            f'version (pip install "transformers{SUPPORTED_TRANSFORMERS}") or upgrade llmcomp-hf'
        )


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
    """Register now if transformers' quantizer registry is loaded, else when it gets imported."""
    with _LOCK:
        if _TARGET in sys.modules:
            register()
        elif not any(isinstance(f, _PostImportHook) for f in sys.meta_path):
            sys.meta_path.insert(0, _PostImportHook())


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Finds ``transformers.quantizers.auto`` with the other finders and registers after it executes."""

    def find_spec(self, fullname: str, path, target=None):  # noqa: ANN001 (importlib signature)
        if fullname != _TARGET:
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
        with _LOCK:
            if self._hook in sys.meta_path:
                sys.meta_path.remove(self._hook)
        try:
            register()
        except ImportError as exc:
            if not _llmcomp_initializing():  # else llmcomp_hf.quantizer registers when its import ends
                warnings.warn(f"llmcomp-hf could not register with transformers: {exc}", stacklevel=2)
        except LlmcompError as exc:  # never break `import transformers` itself
            warnings.warn(f"llmcomp-hf could not register with transformers: {exc}", stacklevel=2)


def _llmcomp_initializing() -> bool:
    """True while one of our modules is half-imported (it imported transformers.quantizers first)."""
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name.startswith("llmcomp_hf.")
    )
