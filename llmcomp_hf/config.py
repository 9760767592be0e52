"""``LosslessConfig``: the ``quantization_config`` that makes transformers compress weights with llmcomp.

It is stored in ``config.json`` under ``quantization_config`` (``quant_method: "llmcomp"``) and
round-trips through ``to_dict``/``from_dict``. Every field is validated; a bad value raises
``ValueError`` naming the field and the fix.

The ``stages`` field is reserved for lossy stages (quantization, low rank, pruning) applied before
the entropy coder by a later, general config with the same ``quant_method``; it must stay empty here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from llmcomp_hf.codec.encoded import DTYPES, MAX_BLOCK, MIN_BLOCK
from llmcomp_hf.errors import FormatError
from llmcomp_hf.format.shard import SHARD_VERSION

QUANT_METHOD = "llmcomp"
CODERS = ("huffman", "rans")
DEFAULT_DTYPES = ("bfloat16", "float16", "float32")
DEFAULT_MODULE_TYPES = ("Linear", "Embedding", "Conv1D")
FIELDS = (
    "coder",
    "block_size",
    "min_numel",
    "dtypes",
    "module_types",
    "modules_to_not_convert",
    "stages",
    "format_version",
)


class LosslessConfig(QuantizationConfigMixin):
    """Bit-exact entropy coding of float weights (llmcomp format, docs/format.md).

    Args:
        coder: ``"huffman"`` (fastest decode, default) or ``"rans"`` (slightly smaller).
        block_size: elements per independently decodable block: a multiple of 64 in [256, 2**24].
        min_numel: tensors with fewer elements stay uncompressed (headers would outweigh the gain).
        dtypes: dtype names whose weights are compressed (``"bfloat16"``, ``"float16"``, ``"float32"``...).
        module_types: class names of the modules whose ``weight`` is compressed; a module matches when
            any class in its MRO has one of these names (``nn.Linear`` subclasses count as ``Linear``).
        modules_to_not_convert: module names to leave uncompressed; an entry matches a module path
            (``"lm_head"``, ``"model.layers.0"``) or any run of its dot-separated segments (``"q_proj"``).
        stages: reserved for lossy stages; must be empty for lossless compression.
        format_version: llmcomp checkpoint format version; written by llmcomp-hf, checked on load.
    """

    def __init__(
        self,
        coder: str = "huffman",
        block_size: int = 1 << 16,
        min_numel: int = 4096,
        dtypes: Iterable[str] = DEFAULT_DTYPES,
        module_types: Iterable[str] = DEFAULT_MODULE_TYPES,
        modules_to_not_convert: Iterable[str] | None = None,
        stages: Iterable[Any] | None = None,
        format_version: int = SHARD_VERSION,
        **kwargs: Any,
    ) -> None:
        method = kwargs.pop("quant_method", QUANT_METHOD)
        if method != QUANT_METHOD:
            raise ValueError(f"LosslessConfig.quant_method must be {QUANT_METHOD!r}, got {method!r}")
        if kwargs:
            raise ValueError(
                f"LosslessConfig got unknown fields {sorted(kwargs)}; known: {list(FIELDS)}. If this config.json "
                "was written by a newer llmcomp-hf, upgrade it (pip install -U llmcomp-hf)."
            )
        self.quant_method = QUANT_METHOD
        self.coder = coder
        self.block_size = block_size
        self.min_numel = min_numel
        self.dtypes = _str_list("dtypes", dtypes)
        self.module_types = _str_list("module_types", module_types)
        self.modules_to_not_convert = _str_list("modules_to_not_convert", modules_to_not_convert or [])
        self.stages = list(stages or [])
        self.format_version = format_version
        self.post_init()

    def post_init(self) -> None:
        """Validate every field; raise ValueError (FormatError for a newer format) naming the field."""
        if self.coder not in CODERS:
            raise ValueError(f"LosslessConfig.coder must be one of {list(CODERS)}, got {self.coder!r}")
        bs = self.block_size
        if not _is_int(bs) or not (MIN_BLOCK <= bs <= MAX_BLOCK) or bs % 64:
            raise ValueError(
                f"LosslessConfig.block_size must be a multiple of 64 in [{MIN_BLOCK}, {MAX_BLOCK}], got {bs!r}; "
                "the default 65536 suits most models"
            )
        if not _is_int(self.min_numel) or self.min_numel < 0:
            raise ValueError(f"LosslessConfig.min_numel must be an int >= 0, got {self.min_numel!r}")
        unknown = [d for d in self.dtypes if d not in DTYPES]
        if unknown or not self.dtypes:
            raise ValueError(
                f"LosslessConfig.dtypes must be a non-empty list of {sorted(DTYPES)}, got {self.dtypes!r}"
            )
        if not self.module_types:
            raise ValueError("LosslessConfig.module_types must name at least one module class, e.g. ['Linear']")
        if self.stages:
            raise ValueError(
                f"LosslessConfig.stages must be empty (lossless compression), got {self.stages!r}; lossy "
                "stages are not supported by this version of llmcomp-hf"
            )
        fv = self.format_version
        if not _is_int(fv) or fv < 1:
            raise ValueError(f"LosslessConfig.format_version must be an int >= 1, got {fv!r}")
        if fv > SHARD_VERSION:
            raise FormatError(
                f"this checkpoint uses llmcomp format version {fv}, but this llmcomp-hf reads up to version "
                f"{SHARD_VERSION}: upgrade llmcomp-hf (pip install -U llmcomp-hf)"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields, as written to ``config.json``."""
        out = {"quant_method": self.quant_method}
        out.update({name: _copy(getattr(self, name)) for name in FIELDS})
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LosslessConfig) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable, like every transformers config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_list(field: str, values: Iterable[str] | str) -> list[str]:
    if isinstance(values, str):
        raise ValueError(f"LosslessConfig.{field} must be a list of strings, got the string {values!r}; wrap it: [{values!r}]")
    out = list(values)
    if not all(isinstance(v, str) and v for v in out):
        raise ValueError(f"LosslessConfig.{field} must be a list of non-empty strings, got {out!r}")
    return out


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value
